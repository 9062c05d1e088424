"""Reading settings from YAML the user (or a run) wrote: one loader for `train --config FILE`, the
presets and a run's config.yaml (`report`, `--resume`), so each cap below applies to all of them."""

from __future__ import annotations

import re

import yaml

from .errors import first_line

MAX_VALUES = 100_000  # values once YAML's aliases are followed (a 464-byte alias bomb expands to 10^9)


class SettingsLoader(yaml.SafeLoader):
    """safe_load whose integers have at most 100 characters (a 1 MB base-60 integer (1:59:59:...) took
    a minute of CPU to build, and a 5,000-digit one fails Python's int-to-string limit later), and
    which refuses a key given twice (YAML keeps the last one: `epochs: 1` ... `epochs: 2` trained 2)."""

    def construct_yaml_int(self, node):
        if len(node.value) > 100:
            raise yaml.constructor.ConstructorError(None, None, "an integer of over 100 characters", node.start_mark)
        return super().construct_yaml_int(node)

    def construct_mapping(self, node, deep=False):
        check_unique_keys(node)
        return super().construct_mapping(node, deep=deep)


SettingsLoader.add_constructor("tag:yaml.org,2002:int", SettingsLoader.construct_yaml_int)
# YAML 1.1 (PyYAML's) reads 1e-3, 5e4 and 1.0e3 as text (its floats need a dot and a signed exponent):
# `lr: 1e-3` was refused as not a number. YAML 1.2's floats, as `--lr 1e-3` reads.
EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class SettingsDumper(yaml.SafeDumper):
    """safe_dump that quotes text SettingsLoader would read as a number (an output folder named 1e3)."""


for _side in (SettingsLoader, SettingsDumper):  # read and written alike
    _side.add_implicit_resolver("tag:yaml.org,2002:float", EXPONENT_FLOAT, list("-+0123456789"))


def dump_settings(values: dict) -> str:
    return yaml.dump(values, Dumper=SettingsDumper, sort_keys=False)


def check_unique_keys(node: yaml.MappingNode) -> None:
    """A mapping's plain keys each given once (merged `<<: *base` keys may be overridden, as YAML means)."""
    seen = set()
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        if (key.tag, key.value) in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key.value[:60]!r} is given twice (again on line {key.start_mark.line + 1})",
                key.start_mark)
        seen.add((key.tag, key.value))


class SettingsError(ValueError):
    """What is wrong with a settings file, in a few words (the caller names the file)."""


def load_settings(text: str) -> dict:
    """The mapping of settings in `text` ({} for an empty file), expanding to at most MAX_VALUES values;
    anything else is a SettingsError."""
    try:
        values = yaml.load(text, Loader=SettingsLoader)  # noqa: S506 - a SafeLoader
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        raise SettingsError(f"not valid YAML ({first_line(exc, 120)})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise SettingsError(f"holds a {type(values).__name__}, not a mapping of settings (model: lenet5, epochs: 10, ...)")
    if not within(values):  # before any value is checked, printed or kept
        raise SettingsError(f"expands to over {MAX_VALUES:,} values (YAML aliases); settings hold a few dozen")
    return values


def within(value, budget: int = MAX_VALUES) -> bool:
    """Whether `value` holds at most `budget` values, counting shared (aliased) parts each time they
    appear, as printing it would; stops counting at the budget (also for self-referencing lists)."""
    stack, seen = [value], 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > budget:
            return False
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set)):
            stack.extend(item)
    return True
