"""Pure command builders: each function returns an argv list (or a shell line made with
shlex) and opens no connection. The task modules run what these build. Host builders take one
`HostContext` (commands/context.py), which owns the host's paths."""

import shlex
from collections.abc import Iterable


def q(value: object) -> str:
    """One value, quoted for the shell (the only quoting helper)."""
    return shlex.quote(str(value))


def sh(argv: Iterable[object]) -> str:
    """One argv list as a shell-safe command line."""
    return shlex.join(str(a) for a in argv)


def chain(*commands: Iterable[str]) -> str:
    """Run commands one after the other, stopping at the first failure."""
    return " && ".join(sh(c) for c in commands)
