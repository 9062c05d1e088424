"""A checkpoint's QAT qparams ('quantization.learned', written by `convzoo quantize`) are checked
before an int8 graph is built from them: seeded mutations of a valid entry are one CheckpointError."""

from __future__ import annotations

import copy
import random

import pytest

from convzoo.errors import CheckpointError
from convzoo.quant.ptq import checked_learned

VALID = {"learned": [
    {"op": "Conv", "input": {"scale": 0.02, "zero_point": 128, "range": [0, 255]},
     "weight": {"scale": [0.01, 0.02], "zero_point": [0, 0], "axis": 0, "range": [-64, 63]}},
    {"op": "Gemm", "input": {"scale": 0.05, "zero_point": 0, "range": [0, 255]},
     "weight": {"scale": [0.03], "zero_point": [0], "axis": 0, "range": [-64, 63]}},
]}
BAD_VALUES = [None, "x", -1, 0, 0.0, -0.5, float("nan"), float("inf"), 300, True, [], {}, [1.0] * 3, "Conv2d"]


def set_at(node, place, value) -> None:
    """Replace the value at `place` (a path from paths()) inside `node`."""
    for key in place[:-1]:
        node = node[key]
    node[place[-1]] = value


def paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from paths(value, prefix + (i,))


def test_valid_and_absent_qparams_pass():
    assert checked_learned(VALID, "qat.pt") == VALID["learned"]
    assert checked_learned(None, "qat.pt") is None and checked_learned({}, "qat.pt") is None


def test_seeded_mutations_are_one_checkpoint_error():
    rng = random.Random(0)
    places = [p for p in paths(VALID) if p]
    refused = 0
    for case in range(300):
        data = copy.deepcopy(VALID)
        place = rng.choice(places)
        set_at(data, place, rng.choice(BAD_VALUES))
        try:
            checked_learned(data, "qat.pt")
        except CheckpointError as exc:
            assert "qat.pt" in str(exc) and "\n" not in str(exc)
            refused += 1
        except Exception as exc:  # noqa: BLE001 - anything else is the bug this test is for
            pytest.fail(f"case {case} (seed 0) at {place}: {type(exc).__name__}: {exc}")
    assert refused >= 200  # some mutations are still valid (a zero-point of 0 or -1, an unused input "range")
    for bad in ("not a mapping", {"learned": "x"}, {"learned": []}, {"learned": [{"op": "Conv"}]}):
        with pytest.raises(CheckpointError):
            checked_learned(bad, "qat.pt")
