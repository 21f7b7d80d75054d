"""A secret setting's value: shown nowhere (tasks/settings.py)."""

from __future__ import annotations


class Secret(str):
    """A string whose repr and str-formatting in logs never show the value."""

    def __repr__(self) -> str:
        return "Secret('[REDACTED]')" if self else "Secret('')"

    def __str__(self) -> str:
        return "[REDACTED]" if self else ""

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def reveal(self) -> str:
        return str.__str__(self)
