"""Named exit codes: every task ends with one of these (docs/reference.md, "Exit codes")."""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # an operation failed; the message says what state the host was left in
    USAGE = 2  # bad input or settings; nothing was changed
    HOST_NOT_READY = 3  # unreachable, unknown host key, no Docker, no release yet, no certbot...
    LOCKED = 4  # another operation holds the host's lock (or a stale lock needs clearing)
    REFUSED = 5  # refused to protect data (schema newer than the release, unreadable database)
