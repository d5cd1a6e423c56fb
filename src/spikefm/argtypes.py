"""Argument types of the command line: each parses one value or raises
``argparse.ArgumentTypeError`` saying what was expected and what was given (argparse turns that
into one ``spikefm <command>: error: ...`` line). Non-finite numbers are never accepted."""
from __future__ import annotations

import argparse
import math
import numbers

__all__ = ["positive_int", "nonnegative_int", "torch_seed", "positive_int_at_most", "finite_float", "positive_float", "nonnegative_float", "fraction",
           "int_list", "units_range"]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (seeds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def torch_seed(text: str) -> int:
    """A seed for a torch random generator: an integer in [0, 2**64)."""
    value = nonnegative_int(text)
    if value >= 2**64:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**64) (a torch generator's seed), got {value}")
    return value


def positive_int_at_most(limit: int, unit: str = ""):
    """An argument type: a positive integer up to ``limit`` (e.g. a bin width in ms)."""
    def parse(text: str) -> int:
        value = positive_int(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"expected a positive integer <= {limit:,}{unit}, "
                                             f"got {value:,}")
        return value

    return parse


def _number(text: str, expected: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {expected} (finite), got {text!r}")
    return value


def finite_float(text: str) -> float:
    return _number(text, "a number")


def positive_float(text: str) -> float:
    value = _number(text, "a positive number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    value = _number(text, "a number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    value = _number(text, "a number in [0, 1)")
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def int_list(text: str) -> list[int]:
    """Comma-separated integers, at least one (e.g. ``1,9``)."""
    items = text.split(",")
    if any(not x.strip() for x in items):  # "1,,2" or "1,": a value left out by mistake
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,9, got {text!r} "
                                         "(an empty item)")
    try:
        return [int(x) for x in items]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,9, got {text!r}") from None


def units_range(text: str) -> tuple[int, int]:
    """``MIN,MAX`` with 1 <= MIN <= MAX."""
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX like 40,200, got {text!r}") from None
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX with 1 <= MIN <= MAX, got {text!r}")
    return lo, hi


def name(text: str) -> str:
    """A non-empty name (not a path), spaces around it removed."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a non-empty name, got {text!r}")
    return text.strip()


def is_int(value) -> bool:
    """A Python or numpy integer, not a bool (numpy's bool is not ``numbers.Integral``): what the
    API accepts wherever a count, size or seed is asked for."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
