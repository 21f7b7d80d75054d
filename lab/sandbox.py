"""A throwaway VPS on this machine: its own sshd on a loopback address, a deploy user in the
docker group, Docker Engine with Compose v2, and local stand-ins for the upstream images."""

from __future__ import annotations

import re
import os
import secrets
import shutil
import socket
from pathlib import Path

from dotenv import dotenv_values
from invoke import Collection, Exit, task

from tasks.exits import ExitCode
from tasks.localhost import ok, run
from tasks.remote import sandbox_dir
from tasks.settings import PROJECT_ROOT, config_section
from tasks.settings_files import EnvChoiceError, resolve_env_file

from .commands import sandbox as build
from .machine import (apt_install, ensure_standin_images, install_compose_plugin, read_records, say,
                      start_dockerd, write_records)

ALIAS = "sandbox"
DEPLOY_COMMAND = f"uv run fab -H {ALIAS} deploy"
DEFAULTS = {"address": "127.0.0.2", "port": 2222, "user": "tasktracker-deploy", "http_port": 18080}


def state_file() -> Path:
    return sandbox_dir() / "state.json"


def load_state() -> dict:
    return read_records(state_file())


def save_state(state: dict) -> None:
    write_records(state_file(), state)


def require_root() -> None:
    if os.geteuid() != 0:
        raise Exit("The sandbox creates a user, starts sshd and Docker: run it as root "
                   "(`sudo -E uv run invoke sandbox.up`).", code=2)


def ensure_docker(state: dict) -> None:
    pid = start_dockerd(sandbox_dir() / "dockerd.log")
    if pid:
        state["dockerd_pid"] = pid
        save_state(state)


def ensure_compose_v2(state: dict) -> None:
    installed = install_compose_plugin()
    if installed:
        state["compose_plugin"] = str(installed)
        save_state(state)


def refuse_foreign_user(state: dict, user: str) -> None:
    """The sandbox only manages a deploy user it created itself (recorded in its state)."""
    if ok(["id", user]) and state.get("user") != user:
        raise Exit(f"The user {user!r} already exists on this machine and was not created by `sandbox.up`; the sandbox "
                   f"will not take it over (it would replace that user's SSH keys). Choose another name with --user, "
                   f"or remove that user yourself if it is a leftover. Nothing was changed.", code=ExitCode.USAGE)


def ensure_user(state: dict, user: str) -> Path:
    keyfile = sandbox_dir() / "id_ed25519"
    if not keyfile.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{user}@sandbox", "-f", str(keyfile)])
    if not ok(["id", user]):
        say(f"creating deploy user {user} (in the docker group)")
        run(["useradd", "--create-home", "--shell", "/bin/bash", "--groups", "docker", user])
        run(["usermod", "-p", "*", user])  # no password, not locked: key login only
        state["user"] = user
        save_state(state)
    home = Path(run(["getent", "passwd", user]).stdout.split(":")[5])
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(keyfile.with_suffix(".pub").read_text())
    run(["chown", "-R", f"{user}:{user}", str(ssh_dir)])
    (ssh_dir / "authorized_keys").chmod(0o600)
    return home


def sshd_running(state: dict) -> bool:
    pidfile = sandbox_dir() / "sshd.pid"
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
        return True
    except (OSError, ValueError):
        return False


def ensure_sshd(state: dict, address: str, port: int, user: str) -> None:
    d = sandbox_dir()
    hostkey = d / "ssh_host_ed25519_key"
    if not hostkey.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sandbox-host", "-f", str(hostkey)])
    (d / "sshd_config").write_text(build.sshd_config(d, address, port, user))
    (d / "known_hosts").write_text(build.known_hosts_line(address, port, hostkey.with_suffix(".pub").read_text()))
    (d / "ssh_config").write_text(build.ssh_config(ALIAS, d, address, port, user))
    if sshd_running(state):
        return
    if not Path("/usr/sbin/sshd").exists():
        apt_install(["openssh-server"])
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    say(f"starting sshd on {address}:{port}")
    run(["/usr/sbin/sshd", "-f", str(d / "sshd_config"), "-E", str(d / "sshd.log")])
    state["sshd"] = True
    save_state(state)


def sandbox_env_text(http_port: int, address: str, ports: dict[str, int], project: str) -> str:
    return "\n".join([
        "# Settings for the local sandbox VPS (made by `invoke sandbox.up`).",
        f"POSTGRES_PASSWORD={secrets.token_urlsafe(18)}",
        f"NATS_PASSWORD={secrets.token_urlsafe(18)}",
        f"TELEGRAM_BOT_TOKEN=sandbox-{secrets.token_hex(8)}",
        "LLM_PROVIDER=openai",
        f"OPENAI_API_KEY=sk-sandbox-{secrets.token_hex(8)}",
        f"APP_URL=http://{address}:{http_port}",
        f"WEBAPP_URL=http://{address}:{http_port}",
        "DOMAIN=app.example.test",
        "APP_DIR=tasktracker",
        f"HTTP_PORT={http_port}",
        f"COMPOSE_PROJECT={project}",
        *(f"{key}={value}" for key, value in ports.items()),
    ]) + "\n"


def deploy_env_file(c) -> Path:
    """The settings file `fab -H sandbox deploy` reads: the one `up` wrote, unless .env.sandbox
    (or an explicit choice) takes its place."""
    try:
        return resolve_env_file(config_section(c), os.environ, ALIAS, PROJECT_ROOT)[0]
    except EnvChoiceError:
        return sandbox_dir() / ".env"


def app_url(state: dict, env_path: Path) -> str:
    """The URL the sandbox's app answers on: the settings' HTTP_PORT (what nginx publishes)."""
    port = (dotenv_values(env_path) if env_path.is_file() else {}).get("HTTP_PORT") or state.get("http_port") or DEFAULTS["http_port"]
    return f"http://{state.get('address') or DEFAULTS['address']}:{port}/"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@task(help={
    "address": f"Loopback address the sandbox's sshd listens on (default {DEFAULTS['address']}).",
    "port": f"Port of the sandbox's sshd (default {DEFAULTS['port']}).",
    "user": f"Deploy user created on the sandbox (default {DEFAULTS['user']}).",
    "http_port": f"Port nginx is published on when deploying to the sandbox (default {DEFAULTS['http_port']}).",
})
def up(c, address=None, port=None, user=None, http_port=None):
    """Create (or repair) the local sandbox VPS; safe to repeat."""
    require_root()
    d = sandbox_dir()
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    state = load_state()
    address = address or state.get("address") or DEFAULTS["address"]
    port = int(port or state.get("port") or DEFAULTS["port"])
    user = user or state.get("user_name") or DEFAULTS["user"]
    http_port = int(http_port or state.get("http_port") or DEFAULTS["http_port"])
    refuse_foreign_user(state, user)
    state.update({"address": address, "port": port, "user_name": user, "http_port": http_port})
    save_state(state)
    missing = [p for p, binary in (("rsync", "rsync"), ("openssh-client", "ssh-keygen"), ("cron", "crontab"),
                                   ("certbot", "certbot")) if not shutil.which(binary)]
    if missing:
        apt_install(missing)
    ensure_docker(state)
    ensure_compose_v2(state)
    ensure_standin_images()
    ensure_user(state, user)
    ensure_sshd(state, address, port, user)
    env_path = d / ".env"
    if not env_path.exists():
        ports = {"HTTPS_PORT": free_port(), "POSTGRES_HOST_PORT": free_port(), "NATS_HOST_PORT": free_port()}
        env_path.write_text(sandbox_env_text(http_port, address, ports, project=re.sub(r"[^a-z0-9_-]", "-", user.lower())))
        env_path.chmod(0o600)
    settings = deploy_env_file(c)
    say(f"ready: host `{ALIAS}` is {user}@{address}:{port} (settings: {settings})")
    say(f"next: `{DEPLOY_COMMAND}`, then the app answers on {app_url(state, settings)}")


@task
def status(c):
    """Show whether the sandbox's sshd, Docker and stack are running."""
    state = load_state()
    if not state:
        print("No sandbox here: create one with `invoke sandbox.up`.")
        return
    print(f"sandbox {state.get('user_name')}@{state.get('address')}:{state.get('port')}")
    print(f"  sshd:    {'running' if sshd_running(state) else 'stopped'}")
    print(f"  docker:  {'running' if ok(['docker', 'info']) else 'not running'}")
    names = [n for n in build.STANDINS if ok(["docker", "image", "inspect", n])]
    print(f"  images:  {len(names)}/{len(build.STANDINS)} stand-ins present")
    for line in sandbox_containers(state):
        print(f"  container {line}")
    print(f"  app:     {app_url(state, deploy_env_file(c))}")
    print(f"  deploy:  {DEPLOY_COMMAND}")


def sandbox_containers(state: dict) -> list[str]:
    """Containers of compose projects deployed by the sandbox user (found by their working dir)."""
    home = f"/home/{state.get('user_name')}/"
    if not state.get("user_name") or not ok(["docker", "info"]):
        return []
    out = run(["docker", "ps", "-a", "--format", '{{.ID}} {{.Names}} {{.Status}} {{.Label "com.docker.compose.project.working_dir"}} {{.Label "com.docker.compose.project"}}'], check=False).stdout
    return [line for line in out.splitlines() if f" {home}" in line]


@task(help={"images": "Also remove the stand-in images and backend images built in the sandbox."})
def down(c, images=False):
    """Remove everything the sandbox made: containers, volumes, user, sshd, dockerd, files."""
    require_root()
    state = load_state()
    if not state:
        print("No sandbox here; nothing to remove.")
        return
    projects = set()
    for line in sandbox_containers(state):
        parts = line.split()
        projects.add(parts[-1])
        run(["docker", "rm", "-f", parts[0]], check=False)
    for project in sorted(projects):
        vols = run(["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}"], check=False).stdout.split()
        nets = run(["docker", "network", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}"], check=False).stdout.split()
        if vols:
            run(["docker", "volume", "rm", "-f", *vols], check=False)
        if nets:
            run(["docker", "network", "rm", *nets], check=False)
        say(f"removed compose project {project}: containers, {len(vols)} volumes, {len(nets)} networks")
    if images and ok(["docker", "info"]):
        refs = run(["docker", "images", "-q", "--filter", f"label={build.STANDIN_LABEL}"], check=False).stdout.split()
        refs += run(["docker", "images", "-q", "tasktracker-backend"], check=False).stdout.split()
        if refs:
            run(["docker", "rmi", "-f", *sorted(set(refs))], check=False)
    pidfile = sandbox_dir() / "sshd.pid"
    if sshd_running(state):
        os.kill(int(pidfile.read_text().strip()), 15)
        say("stopped sshd")
    if state.get("user"):
        run(["crontab", "-r", "-u", state["user"]], check=False)
        run(["pkill", "-u", state["user"]], check=False)
        run(["userdel", "-r", state["user"]], check=False)
        say(f"removed user {state['user']}")
    if state.get("compose_plugin"):
        Path(state["compose_plugin"]).unlink(missing_ok=True)
    if state.get("dockerd_pid"):
        try:
            os.kill(int(state["dockerd_pid"]), 15)
            say("stopped the dockerd the sandbox had started")
        except OSError:
            pass
    shutil.rmtree(sandbox_dir(), ignore_errors=True)
    say("sandbox removed")


ns = Collection("sandbox")
ns.add_task(up)
ns.add_task(status)
ns.add_task(down)
