"""Session fixtures: the sandbox VPS every end-to-end test deploys to."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers import ROOT, free_port

BIN = Path(sys.executable).parent


class Sandbox:
    """A test sandbox: its own state dir, loopback address, sshd port and deploy user."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="tasktracker-e2e-"))
        self.address = "127.0.0.3"
        self.port = free_port()
        self.user = f"tt-e2e-{secrets.token_hex(3)}"
        self.http_port = free_port()
        self.env = {**os.environ, "TASKTRACKER_SANDBOX_DIR": str(self.dir), "TASKTRACKER_ENV_FILE": str(self.dir / ".env")}
        self.env.pop("TASKTRACKER_APP_DIR", None)

    @property
    def project(self) -> str:
        return self.user

    @property
    def home(self) -> Path:
        return Path("/home") / self.user

    def invoke(self, *args, check=True, timeout=900):
        out = subprocess.run([str(BIN / "invoke"), *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"invoke {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def fab(self, *args, env_file: Path | None = None, check=True, host="sandbox", timeout=900):
        env = dict(self.env)
        if env_file:
            env["TASKTRACKER_ENV_FILE"] = str(env_file)
        argv = [str(BIN / "fab"), *(["-H", host] if host else []), *args]
        out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"fab {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def env_file(self, name: str, base: Path | None = None, **overrides) -> Path:
        """A settings file based on the sandbox's own (or `base`), with overrides."""
        lines = (base or self.dir / ".env").read_text().splitlines()
        keys = {line.split("=", 1)[0] for line in lines if "=" in line}
        lines = [f"{k}={overrides[k]}" if k in overrides else line for line in lines for k in [line.split("=", 1)[0]]]
        lines += [f"{k}={v}" for k, v in overrides.items() if k not in keys]
        path = self.dir / name
        path.write_text("\n".join(lines) + "\n")
        return path

    def app_env(self, name: str, variant: str = "", **overrides) -> Path:
        """Settings for a separate app on the sandbox (own APP_DIR, project, ports), made once;
        a `variant` applies `overrides` on top of it."""
        self.ports = getattr(self, "ports", {})
        base = self.dir / f"{name}.env"
        if not base.exists():
            self.ports[name] = free_port()
            self.https_ports = getattr(self, "https_ports", {})
            self.https_ports[name] = free_port()
            self.env_file(base.name, APP_DIR=name, COMPOSE_PROJECT=f"{self.project}-{name}", HTTP_PORT=self.ports[name],
                          HTTPS_PORT=self.https_ports[name],
                          POSTGRES_HOST_PORT=free_port(), NATS_HOST_PORT=free_port(), NATS_MONITOR_HOST_PORT=free_port())
        if not variant:
            return base
        return self.env_file(f"{name}-{variant}.env", base=base, **overrides)

    def app_url(self, name: str, path: str = "/") -> str:
        return f"http://{self.address}:{self.ports[name]}{path}"

    def fab_in(self, project_dir: Path, *args, env_file: Path, check=True, timeout=900):
        """fab from another working copy of the project (a changed release)."""
        env = {**self.env, "TASKTRACKER_ENV_FILE": str(env_file)}
        out = subprocess.run([str(BIN / "fab"), "-H", "sandbox", *args], cwd=project_dir, env=env,
                             capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"fab {' '.join(args)} in {project_dir} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def url(self, path: str = "/") -> str:
        return f"http://{self.address}:{self.http_port}{path}"

    def host_path(self, rel: str) -> Path:
        return self.home / rel


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
