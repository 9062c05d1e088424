"""`convzoo report`: a run's config, accuracy and per-epoch table; several runs side by side."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ..atomic import atomic_write_bytes, check_target
from ..engine.rundir import read_config, read_metrics
from ..errors import ConfigError, WriteError, printable
from .plots import check_plot_target, is_run_folder, plot_curves

# What marks a report as convzoo's (a comment on report.md's first line, invisible when rendered; a
# generator tag in report.html), so a later report replaces its own files, never a user's report.md.
MD_MARK = "<!-- written by convzoo report -->"
HTML_MARK = "<meta name='generator' content='convzoo report'>"


def load_run(folder) -> dict:
    folder = Path(folder)
    if not folder.exists():  # a mistyped name is not a folder that lacks a run
        raise ConfigError("no such folder", folder)
    if not (folder / "metrics.csv").is_file():
        raise ConfigError("not a run directory (no metrics.csv)", folder)
    config = read_config(folder)
    history = read_metrics(folder)
    key = "val_acc" if any(h.get("val_acc") is not None for h in history) else "test_acc"
    scored = [h for h in history if h[key] is not None]
    if not scored:
        raise ConfigError("run has no evaluated epoch yet", folder)
    best = max(scored, key=lambda h: h[key])
    return {"folder": folder, "name": folder.name, "config": config, "history": history, "select": key,
            "best": best, "last": history[-1], "time_s": sum(h["epoch_time_s"] or 0 for h in history),
            "planned": unfinished(folder, config, history)}


def unfinished(folder: Path, config: dict, history: list[dict]) -> int | None:
    """The epochs a run was asked for when it has fewer rows and did not stop at its --target-acc
    (interrupted, or still training; summary.json is written when a run ends), else None."""
    import json

    planned = config.get("epochs")
    if not isinstance(planned, int) or isinstance(planned, bool) or len(history) >= planned:
        return None
    summary = folder / "summary.json"
    try:
        ended = json.loads(summary.read_bytes()[:1 << 20]) if summary.is_file() else {}
    except (OSError, ValueError):
        ended = {}
    if isinstance(ended, dict) and ended.get("reached") and ended.get("epoch") == history[-1].get("epoch"):
        return None  # stopped at its target
    return planned


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def shown(value, limit: int = 80) -> str:
    """A config.yaml value as one short markdown-safe line: the file may have been edited by anyone
    (a newline in a value added a heading to report.md)."""
    text = printable(str(value)).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def fmt(value, spec=".4f") -> str:
    return "-" if value is None else format(value, spec)


def epoch_table(run: dict) -> str:
    rows = [[int(h["epoch"]), fmt(h["train_loss"]), fmt(h["train_acc"]), fmt(h.get("val_acc")), fmt(h["test_acc"]),
             fmt(h["lr"], ".6f"), fmt(h["epoch_time_s"], ".1f"), fmt(h["images_per_s"], ".0f")] for h in run["history"]]
    return markdown_table(["epoch", "train loss", "train acc", "val acc", "test acc", "lr", "time (s)", "img/s"], rows)


def epochs_done(run: dict) -> str:
    """Epochs in the run's history; "18 of 40 (stopped)" for a run that has not ended."""
    done = len(run["history"])
    return f"{done} of {run['planned']} (stopped)" if run["planned"] else str(done)


def comparison_table(runs: list[dict]) -> str:
    rows = [[shown(r["name"]), *(shown(r["config"].get(k, "?")) for k in ("model", "dataset")), epochs_done(r),
             *(shown(r["config"].get(k, "?")) for k in ("batch_size", "optimizer", "schedule")),
             fmt(r["best"]["test_acc"]), fmt(r["last"]["test_acc"]), fmt(r["time_s"], ".0f")] for r in runs]
    return markdown_table(["run", "model", "dataset", "epochs", "batch", "optimizer", "schedule", "best test acc",
                           "last test acc", "train time (s)"], rows)


def build_report(folders, output=None, *, html_page: bool = False) -> tuple[str, Path]:
    """Write report.md (and report.html) and return the markdown and where it went."""
    # A folder given twice (o4 o4, or o4 ./o4) is one run, shown once.
    unique = {}
    for folder in folders:
        unique.setdefault(Path(folder).resolve(), folder)
    runs = [load_run(f) for f in unique.values()]
    if len({r["name"] for r in runs}) < len(runs):  # same folder names: tell them apart by their parents
        for r in runs:
            r["name"] = f"{r['folder'].parent.name}/{r['folder'].name}"
    out = Path(output) if output else runs[0]["folder"] / "report.md" if len(runs) == 1 else Path("report.md")
    curves_path = curves_for(out, runs)
    check_outputs(out, curves_path, out.with_suffix(".html") if html_page else None, runs)
    if out.suffix.lower() != ".md":  # markdown written as r.png or r.html opens as a broken image or page
        raise WriteError("the report is markdown: choose an --output ending in .md (--html writes the .html beside "
                         "it)", out)
    if len(runs) == 1:
        run = runs[0]
        curves = plot_curves(run["history"], curves_path)
        settings = ", ".join(f"{shown(k)}={shown(v)}" for k, v in run["config"].items() if v not in (None, [], ""))
        stopped = (f"Stopped after {len(run['history'])} of its {run['planned']} epochs: interrupted, or "
                   "still training (`convzoo train --resume` continues it).\n\n") if run["planned"] else ""
        text = (f"# Run {shown(run['name'])}\n\n{settings}\n\n{stopped}"
                f"Best {run['select'].replace('_', ' ')} at epoch {int(run['best']['epoch'])}: "
                f"test accuracy {fmt(run['best']['test_acc'])}; last epoch: {fmt(run['last']['test_acc'])}; "
                f"training time {run['time_s']:.0f} s.\n\n{epoch_table(run)}\n\n![curves]({rel(curves, out)})\n")
        images = [curves]
    else:
        curves = plot_curves({r["name"]: r["history"] for r in runs}, curves_path)
        text = f"# {len(runs)} runs compared\n\n{comparison_table(runs)}\n\n![curves]({rel(curves, out)})\n"
        images = [curves]
    atomic_write_bytes(out, f"{MD_MARK}\n{text}".encode())
    if html_page:
        atomic_write_bytes(out.with_suffix(".html"), to_html(text, images).encode())
    return text, out


def curves_for(out: Path, runs: list[dict]) -> Path:
    """Where the report's curves go: the run's own curves.png for a report written in the run folder,
    else beside the report (r.md -> r-curves.png). A report --output elsewhere rewrote the run's
    curves.png, and failed on a read-only run folder it had no need to write."""
    if in_run_folder(out, runs):
        return runs[0]["folder"] / "curves.png"
    return out.with_name(out.stem + "-curves.png")


def in_run_folder(out: Path, runs: list[dict]) -> bool:
    """Is the report of one run, written in that run's folder?"""
    return len(runs) == 1 and out.absolute().parent.resolve() == runs[0]["folder"].resolve()


REPORT_FILES = {"report.md", "report.html", "curves.png"}  # what a report (re)writes in a run folder


def run_files(runs: list[dict]) -> list[Path]:
    """The runs' own files, which no output may replace (the report's earlier outputs aside)."""
    return [f for r in runs for f in r["folder"].iterdir() if f.is_file() and f.name not in REPORT_FILES]


def check_outputs(out: Path, curves: Path, page: Path | None, runs: list[dict]) -> None:
    """Before anything is written: no output is one of the runs' own files (`--output run/metrics.csv`
    replaced the metrics with markdown) or another of the report's outputs, and each replaces only an
    earlier report's file of its kind (`report a b` wrote over a user's own ./report.md)."""
    inputs = run_files(runs)
    targets = [t for t in (out, curves, page) if t]
    for k, target in enumerate(targets):
        check_target(target, inputs=inputs)
        if target.resolve() in [t.resolve() for t in targets[:k]]:
            raise WriteError("the report's markdown, plot and page would all be written to this one file; "
                             "choose an --output ending in .md", target)
    for target in (out, page):
        if target and target.exists() and not earlier_report(target):
            raise WriteError("exists and is a file convzoo did not write, not an earlier report: writing it would "
                             "destroy that; choose another --output", target)
    # an unmarked PNG is an older convzoo's only as the run's curves.png, or ./report-curves.png, in a run folder
    check_plot_target(curves, "curves", default=curves.name if in_run_folder(out, runs) else "report-curves.png",
                      inputs=inputs)


def earlier_report(path: Path) -> bool:
    """Is `path` a report convzoo wrote? A marked one anywhere; an unmarked report.md or report.html
    (from before the mark) only in a run folder, as check_plot_target allows an older plot."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:  # unreadable: not known to be ours
        return False
    return head.startswith(MD_MARK.encode()) or HTML_MARK.encode() in head \
        or (path.name in REPORT_FILES and is_run_folder(path.parent))


def rel(path: Path, report: Path) -> str:
    try:
        return str(path.resolve().relative_to(report.resolve().parent))
    except ValueError:
        return str(path.resolve())


def to_html(markdown: str, images: list[Path]) -> str:
    """A single self-contained page: tables as HTML, plots embedded as base64 PNG."""
    body, table = [], []

    def flush():
        if table:
            header, *rows = [[c.strip() for c in line.strip("|").split("|")] for line in table if "---|" not in line]
            body.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in header) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
                        + "</table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("!["):
            continue
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    flush()
    for image in images:
        data = base64.b64encode(Path(image).read_bytes()).decode()
        body.append(f'<img alt="{html.escape(Path(image).stem)}" src="data:image/png;base64,{data}">')
    style = ("body{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px}table{border-collapse:collapse;"
             "margin:1rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'>{HTML_MARK}" \
           f"<title>convzoo report</title><style>{style}</style>" \
           f"</head><body>{''.join(body)}</body></html>"
