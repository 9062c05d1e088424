"""What every benchmark script shares at its boundary: option types with ranges (a count of 0 or -3 was a
ZeroDivisionError or torch's RuntimeError deep in the run) and a main that prints a mistake in one line."""

from __future__ import annotations

import argparse
import sys


def at_least(low: float, kind=int):
    """An argparse type: a number of `kind` not below `low`."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if not value >= low:
            raise argparse.ArgumentTypeError(f"{text} is below {low}")
        return value
    return parse


def above_zero(text: str) -> float:
    """An argparse type: a number of seconds greater than 0."""
    value = at_least(0.0, float)(text)
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
