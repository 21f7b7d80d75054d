"""The programs that run on the host, each a file in its own language under tasks/programs/
(`.sh`, `.awk`), linted as what it is (tests/test_static.py); read here for the builders that
install or run them."""

from __future__ import annotations

from functools import cache
from pathlib import Path

PROGRAMS_DIR = Path(__file__).resolve().parent.parent / "programs"


@cache
def program(name: str) -> str:
    """The text of tasks/programs/NAME."""
    return (PROGRAMS_DIR / name).read_text()


def filled(text: str, values: dict[str, str]) -> str:
    """`text` with each placeholder (`@NAME@`) replaced by its value, as given (quote it first)."""
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text
