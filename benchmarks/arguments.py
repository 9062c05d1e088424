"""What every benchmark script shares at its boundary: option types with ranges (a count of 0 or -3 was a
ZeroDivisionError or torch's RuntimeError deep in the run), built on the CLI's own `number`, and a main
that prints a mistake in one line."""

from __future__ import annotations

import argparse
import sys

from convzoo.cli import number


def at_least(low: int):
    """An argparse type: a whole number not below `low` (the CLI's `number`)."""
    return number(int, low)


def above_zero(text: str) -> float:
    """An argparse type: a finite number of seconds greater than 0."""
    value = number(float, 0.0)(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def run(main) -> None:
    """main(), with a user's mistake (an unknown model, a missing checkpoint) as one line and exit 2."""
    from convzoo.errors import ConvzooError

    try:
        sys.exit(main())
    except ConvzooError as exc:
        sys.exit(f"{sys.argv[0]}: error: {exc}")
