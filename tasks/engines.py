"""The one way to open a host: connect, read its facts, and get the engine that runs the stack
there (`Host`: Compose on one host; `SwarmHost`: a stack on a swarm manager). Tasks open hosts
only through `open_host`, and ask the engine, never which engine it is."""

from __future__ import annotations

from invoke import Exit

from .exits import ExitCode
from .host import Host
from .settings import Settings
from .steps import Steps
from .swarm import SwarmHost

ENGINES: dict[str, type[Host]] = {"compose": Host, "swarm": SwarmHost}


def open_host(c, settings: Settings | None = None, *, compose: str = "auto",
              steps: Steps | None = None) -> Host:
    """`Host.open`, as the engine the host runs the stack with (`Host.engine`)."""
    host = Host.open(c, settings, compose=compose, steps=steps)
    if host.engine == "swarm" and host.settings.managed_db:
        raise Exit(f"{host.name} runs the stack on a Docker Swarm, and a managed PostgreSQL "
                   "(DATABASE_HOST) is supported with Compose only so far. Empty DATABASE_HOST "
                   "(the stack's own postgres) or deploy to a Compose host "
                   "(docs/managed-services.md). Nothing was changed on the server.",
                   code=ExitCode.USAGE)
    engine = ENGINES[host.engine]
    return host if type(host) is engine else engine.adopt(host)
