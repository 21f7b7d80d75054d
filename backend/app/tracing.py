"""Tracing with Logfire, only when the operator gave a token (LOGFIRE_TOKEN).

With the token, the API and the worker each send their traces and logs to Logfire (or to
LOGFIRE_BASE_URL, any endpoint that takes Logfire's OTLP/HTTP exports): a span per HTTP request
(FastAPI), per database query (psycopg, the driver SQLAlchemy uses) and per job the worker runs
(`job_span`), and the loguru log lines. Without it this module imports nothing of Logfire or
OpenTelemetry: no exporter, no thread, no network call, the same memory as before.

The token is read from the environment only (the release's 0600 .env, through Compose's
`env_file`); it is never logged and never put on a command line.
"""

from __future__ import annotations

import contextlib
import os

_state: dict[str, object] = {}


def enabled() -> bool:
    """Whether this process sends traces (`setup` ran with a token)."""
    return "logfire" in _state


def setup(service: str) -> bool:
    """Configure Logfire for this process, once, if LOGFIRE_TOKEN is set; True when it did."""
    if "service" in _state:
        return enabled()
    _state["service"] = service
    token = os.environ.get("LOGFIRE_TOKEN", "").strip()
    if not token:
        return False
    import logfire
    from loguru import logger

    base_url = os.environ.get("LOGFIRE_BASE_URL", "").strip() or None
    logfire.configure(
        token=token,
        send_to_logfire="if-token-present",
        service_name=f"tasktracker-{service}",
        service_version=os.environ.get("RELEASE_ID", "dev"),
        console=False,  # the container's own log stays as it was
        advanced=logfire.AdvancedOptions(base_url=base_url),
    )
    logfire.instrument_psycopg("psycopg")  # every query, from SQLAlchemy's pool too
    logger.add(**logfire.loguru_handler())
    _state["logfire"] = logfire
    return True


def instrument_fastapi(app) -> None:
    """A span per request of `app` (FastAPI), when tracing is on."""
    if enabled():
        _state["logfire"].instrument_fastapi(app)


def job_span(name: str, **attributes):
    """A span around one job the worker runs (a no-op without tracing)."""
    if not enabled():
        return contextlib.nullcontext()
    return _state["logfire"].span("job {job}", job=name, **attributes)
