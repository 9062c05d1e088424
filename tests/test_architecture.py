"""The layout's promises, checked on the source: no import cycle between convzoo's modules (imports
inside functions included), and serving's modules never import torch."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "convzoo"
SERVING = ["convzoo.cli", "convzoo.metadata", "convzoo.errors", "convzoo.deploy.predict", "convzoo.deploy.server",
           "convzoo.deploy.preprocess", "convzoo.deploy.runtime", "convzoo.models.pretrained"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> list[tuple[str, bool]]:
    """(imported convzoo module, at module level?) for every import statement in the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from . import rundir` imports the submodule; `from .x import f` imports module x
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        found += [(t, id(node) in top) for t in targets if t.split(".")[0] in ("convzoo", "torch")]
    return found


def test_no_import_cycles():
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    graph = {module_name(f): {t for t, _ in imports(f, modules) if t in modules and t != module_name(f)}
             for f in files}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def strongconnect(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            strongconnect(v)
    assert not cycles, f"import cycles: {cycles}"


def test_serving_modules_import_no_torch_at_load():
    files = {module_name(f): f for f in PACKAGE.rglob("*.py")}
    for name in SERVING:
        eager = [t for t, at_top in imports(files[name], set(files)) if at_top and t.split(".")[0] == "torch"]
        assert not eager, f"{name} imports {eager} when loaded; serving must not need torch"
