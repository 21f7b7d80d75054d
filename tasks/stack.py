"""Running Compose commands against the current release on a host (shared by compose and migrate)."""

from __future__ import annotations

from invoke import Exit

from . import remote
from .commands import compose as compose_commands
from .commands import release as release_commands
from .settings import Settings


def run_on_current(c, build_argv, *, hide=False, pty=False, what="command", conn=None, settings=None):
    """Connect (unless given a connection), then run `build_argv(variant)` in the current release
    with the host's Compose."""
    settings = settings or Settings.from_context(c)
    conn = conn or remote.connect(c)
    command = release_commands.in_current(settings.app_dir, compose_commands.either(lambda v: build_argv(v, settings.compose_project)))
    result = conn.run(command, warn=True, hide=hide, pty=pty, in_stream=False if not pty else None)
    if result.exited == release_commands.NO_RELEASE_EXIT:
        raise Exit(f"{conn.original_host} has no release yet (nothing at {settings.app_dir}/current), so there is "
                   f"nothing to {what}. Deploy one first: `fab -H {conn.original_host} deploy`.", code=3)
    if not result.ok:
        raise Exit(f"`{what}` failed on {conn.original_host} (exit {result.exited}); its output is above.", code=result.exited or 1)
    return result
