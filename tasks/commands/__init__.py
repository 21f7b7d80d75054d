"""Pure command builders: each function returns an argv list (or a shell line made with
shlex) and opens no connection. The task modules run what these build."""

import shlex
from collections.abc import Iterable


def sh(argv: Iterable[str]) -> str:
    """One argv list as a shell-safe command line."""
    return shlex.join(str(a) for a in argv)


def chain(*commands: Iterable[str]) -> str:
    """Run commands one after the other, stopping at the first failure."""
    return " && ".join(sh(c) for c in commands)
