"""Session fixtures: the sandbox VPS every end-to-end test deploys to."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.support import Sandbox


@pytest.fixture(scope="session")
def sandbox():
    if os.geteuid() != 0:
        pytest.skip("the sandbox VPS needs root (it creates a user and runs sshd)")
    box = Sandbox()
    try:
        box.invoke("sandbox.up", "--address", box.address, "--port", str(box.port), "--user", box.user,
                   "--http-port", str(box.http_port))
        yield box
    finally:
        box.invoke("sandbox.down", check=False)
        shutil.rmtree(box.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def deployed(sandbox):
    """The stack deployed once to the sandbox with Compose v2 (the main path)."""
    result = sandbox.fab("deploy")
    return result
