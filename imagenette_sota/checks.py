"""Checks of the numbers a constructor accepts: the first one out of range is refused, naming itself and its range."""

from __future__ import annotations


def check_numbers(**checks: tuple[float, str, bool]) -> None:
    """Refuse the first number outside its range: ``name=(value, "the range in words", value is in range)``."""
    for name, (value, allowed, ok) in checks.items():
        if not ok:  # NaN compares False, so it is refused too
            raise ValueError(f"{name}={value!r} must be {allowed}")
