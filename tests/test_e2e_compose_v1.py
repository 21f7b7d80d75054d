"""The same deploy with Compose v1 (`docker-compose --compatibility`) on the host."""

import json
import os
import urllib.request

import pytest

from tests.support import free_port

pytestmark = pytest.mark.e2e


def test_deploy_with_compose_v1(sandbox, deployed):
    port = free_port()
    env_file = sandbox.env_file(
        "v1.env", APP_DIR="tasktracker-v1", COMPOSE_PROJECT=f"{sandbox.project}-v1", HTTP_PORT=port, HTTPS_PORT=free_port(),
        POSTGRES_HOST_PORT=free_port(), NATS_HOST_PORT=free_port(),
    )
    out = sandbox.fab("deploy", "--skip-build", "--compose", "v1", env_file=env_file)
    release = os.readlink(sandbox.home / "tasktracker-v1" / "current").split("/")[-1]
    meta = json.loads((sandbox.home / "tasktracker-v1" / "releases" / release / "RELEASE.json").read_text())
    assert meta["compose"] == "v1"
    assert "(Compose v1)" in out.stdout
    assert "NOTICE" not in out.stdout  # every service runs the definition it was just created from
    with urllib.request.urlopen(f"http://{sandbox.address}:{port}/api/health", timeout=10) as res:
        health = json.loads(res.read())
    assert health["checks"]["database"]["ok"] and health["checks"]["nats"]["ok"]
    # v1 names containers project_service_1 and applied the plan's limits (--compatibility).
    import subprocess

    mem = subprocess.run(["docker", "inspect", "-f", "{{.HostConfig.Memory}}", f"{sandbox.project}-v1_api_1"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert mem == str(1024**3)
    ps = sandbox.fab("compose.ps", env_file=env_file).stdout
    assert f"{sandbox.project}-v1_nginx_1" in ps
