"""`fab -H HOST deploy`: build, ship a release, migrate, start, prove health, switch `current`."""

from __future__ import annotations

import getpass
import hashlib
import io
import re
import shlex
import socket
from datetime import datetime, timezone
from pathlib import Path

from invoke import Collection, Context, Exit, task

from . import remote
from .build import build_frontend, git_commit, tree_hash, FRONTEND
from .commands import compose as compose_commands
from .commands import release as release_commands
from .commands import sh
from .settings import PROJECT_ROOT, Settings, env_file_path
from .steps import StepFailed, Steps, run_checked

SENT_PATHS = ("compose.yml", "docker-compose.production.yml", "nginx", "backend", "frontend/dist", release_commands.PROBE_PATH)
RSYNC_EXCLUDES = ("__pycache__", "*.pyc", ".pytest_cache", ".gitkeep")


def new_release_id(now: datetime, commit: str) -> str:
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{re.sub(r'[^0-9a-z]+', '', commit.lower())[:12] or 'nogit'}"


def dist_assets(dist: Path) -> list[str]:
    """The hashed asset paths index.html references (what the probe expects to be served)."""
    return sorted(set(re.findall(r'(?:src|href)="(/assets/[^"]+)"', (dist / "index.html").read_text())))


def render_env(settings: Settings, env_file: Path | None) -> str:
    """The host's .env: the local file's lines with every validated setting applied (env wins)."""
    from dataclasses import fields

    from dotenv import dotenv_values

    values: dict[str, str] = {}
    if env_file and env_file.is_file():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    for f in fields(Settings):
        value = getattr(settings, f.name)
        values[Settings.env_key(f.name)] = value.reveal() if hasattr(value, "reveal") else str(value)
    return "".join(f"{key}={_env_quote(value)}\n" for key, value in values.items())


def _env_quote(value: str) -> str:
    if re.fullmatch(r"[\w@%+=:,./-]*", value):
        return value
    return "'" + value.replace("'", "'\\''") + "'" if "'" not in value else '"' + value.replace('"', '\\"') + '"'


def release_fingerprint(root: Path, env_text: str, variant: str) -> str:
    digest = hashlib.sha256(variant.encode() + b"\0" + env_text.encode())
    for rel in SENT_PATHS:
        path = root / rel
        digest.update(rel.encode() + b"\0")
        digest.update((tree_hash(path, {"__pycache__", ".pytest_cache"}) if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()).encode())
    return digest.hexdigest()


def backend_image(root: Path) -> str:
    return f"tasktracker-backend:{tree_hash(root / 'backend', {'__pycache__', '.pytest_cache'})[:12]}"


def choose_compose(facts: dict[str, str], wanted: str) -> str | None:
    if wanted in ("auto", "v2") and facts.get("compose_v2"):
        return "v2"
    if wanted in ("auto", "v1") and facts.get("compose_v1"):
        return "v1"
    return None


def host_problem(facts: dict[str, str], alias: str, wanted: str) -> str | None:
    """A clear message when the host cannot take a deploy, else None."""
    user = facts.get("user", "the deploy user")
    docker = facts.get("docker", "missing")
    if docker == "missing":
        return (f"Docker is not installed on {alias}. Install Docker Engine with the Compose plugin "
                f"(`curl -fsSL https://get.docker.com | sh`), add {user} to the docker group "
                f"(`usermod -aG docker {user}`), and run the deploy again.")
    if not re.match(r"^\d+\.\d+", docker):
        return (f"{user} cannot use Docker on {alias} ({docker.strip()[:160]}). Start the Docker daemon "
                f"(`systemctl start docker`) and add {user} to the docker group (`usermod -aG docker {user}`, "
                f"then log in again), and run the deploy again.")
    if choose_compose(facts, wanted) is None:
        which = "Docker Compose" if wanted == "auto" else f"Docker Compose {wanted}"
        return (f"{which} is not available on {alias}. Install the Compose plugin "
                f"(`apt-get install docker-compose-plugin`) and run the deploy again.")
    if not facts.get("rsync"):
        return f"rsync is not installed on {alias}. Install it (`apt-get install rsync`) and run the deploy again."
    return None


def parse_rsync_sent(output: str) -> int:
    match = re.search(r"Total bytes sent: ([\d,.]+)", output)
    return int(match.group(1).replace(",", "").replace(".", "")) if match else 0


def preflight(conn, settings: Settings, wanted: str) -> tuple[dict[str, str], str]:
    result = run_checked(conn, release_commands.preflight(settings.app_dir), "preflight")
    facts = release_commands.parse_preflight(result.stdout)
    problem = host_problem(facts, conn.original_host, wanted)
    if problem:
        raise Exit(problem + " Nothing was changed on the server.", code=3)
    return facts, choose_compose(facts, wanted)


@task(help={
    "skip_build": "Deploy the frontend/dist already built (CI builds once, then deploys with this).",
    "compose": "Which Docker Compose to use on the host: auto (v2 when present, else v1), v1 or v2.",
})
def deploy(c, skip_build=False, compose="auto"):
    """Deploy the stack as a new release: build, upload, migrate, start, check health, switch."""
    if compose not in ("auto", "v1", "v2"):
        raise Exit(f"--compose must be auto, v1 or v2 (got {compose!r}).", code=2)
    remote.require_host(c)
    settings = Settings.from_context(c)  # validated before any connection opens
    env_file = env_file_path(c)
    if skip_build and not (FRONTEND / "dist" / "index.html").is_file():
        raise Exit("--skip-build was given but frontend/dist/index.html is missing: run `invoke build` first "
                   "(or deploy without --skip-build). Nothing was changed on the server.", code=2)
    steps = Steps(f"Deploy to {c.original_host}", settings.secret_values())
    try:
        with steps.step("connect and check host"):
            conn = remote.connect(c)
            facts, variant = preflight(conn, settings, compose)
        run_deploy(c, conn, settings, env_file, facts, variant, steps, skip_build)
    except StepFailed as failure:
        steps.fail(f"Deploy to {c.original_host} failed at step '{failure.step}': {failure.detail}")
    steps.print_table()
    print(f"  remote commands: {remote.CountingConnection.remote_commands} (+1 rsync session)")


def run_deploy(c, conn, settings: Settings, env_file, facts, variant, steps: Steps, skip_build: bool) -> None:
    host = conn.original_host
    app_dir = settings.app_dir
    if skip_build:
        steps.skip("build frontend", "--skip-build")
    else:
        with steps.step("build frontend"):
            build_frontend(Context(config=c.config), FRONTEND)
    dist = FRONTEND / "dist"
    env_text = render_env(settings, env_file)
    fingerprint = release_fingerprint(PROJECT_ROOT, env_text, variant)
    image = backend_image(PROJECT_ROOT)
    assets = dist_assets(dist)
    base_url = f"http://127.0.0.1:{settings.http_port}"
    current = Path(facts.get("current") or "").name
    current_meta = _json(facts.get("current_meta"))

    if current and current_meta.get("fingerprint") == fingerprint:
        print(f"Nothing changed since release {current}: checking that it still serves.")
        with steps.step("health checks"):
            probe(conn, f"{app_dir}/releases/{current}", image, base_url, assets)
        print(f"Release {current} is current and healthy on {host}.")
        return

    release_id = new_release_id(datetime.now(timezone.utc), git_commit())
    release_path = f"{app_dir}/releases/{release_id}"
    print(f"Release {release_id} -> {host}:{release_path} (Compose {variant})")
    with steps.step("prepare release and upload .env"):
        run_checked(conn, release_commands.prepare(app_dir, release_id, compose_commands.release_override(image, release_id)),
                    "prepare release")
        conn.put(io.BytesIO(env_text.encode()), remote=release_commands.env_upload_path(app_dir))
        run_checked(conn, sh(release_commands.install_env(app_dir)), "install .env")
    with steps.step("upload files (rsync)"):
        result = remote.rsync(conn, list(SENT_PATHS), f"{release_path}/", cwd=str(PROJECT_ROOT), relative=True,
                              excludes=RSYNC_EXCLUDES, link_dest=f"../{current}" if current else None, delete=False)
        if not result.ok:
            raise StepFailed("upload files", f"rsync exit {result.exited}: {result.stderr.strip()[-800:]}")
        sent = parse_rsync_sent(result.stdout)
        print(f"   sent {sent} bytes{' (unchanged files hard-linked from ' + current + ')' if current else ''}")
    project = settings.compose_project
    with steps.step("build backend image"):
        build = compose_commands.build_backend(variant, project)
        run_checked(conn, release_commands.in_release(app_dir, release_id, release_commands.image_present_or_build(image, sh(build))),
                    "build backend image", hide=False)
    with steps.step("migrate database"):
        run_checked(conn, release_commands.in_release(app_dir, release_id, sh(compose_commands.migrate(variant, project))),
                    "migrate database", hide=False)
    with steps.step("start stack"):
        run_checked(conn, release_commands.in_release(app_dir, release_id, sh(compose_commands.up(variant, project))),
                    "start stack", hide=False)
    meta = {"release": release_id, "commit": git_commit(), "deployed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "deployed_by": f"{getpass.getuser()}@{socket.gethostname()}", "fingerprint": fingerprint,
            "backend_image": image, "compose": variant}
    with steps.step("health checks"):
        try:
            probe(conn, release_path, image, base_url, assets)
        except StepFailed as failure:
            restore_previous(conn, app_dir, current, variant, project)
            raise StepFailed("health checks", failure.detail + (
                f" The previous release {current} was started again and is still current." if current else
                " No earlier release exists; `current` was not created."))
    with steps.step("switch current and prune"):
        run_checked(conn, release_commands.finalize(app_dir, release_id, {**meta, "result": "ok"}, settings.keep_releases),
                    "switch current")
    print(f"Release {release_id} is live on {host}.")


def probe(conn, release_path: str, image: str, base_url: str, assets: list[str]) -> None:
    command = f"cd {shlex.quote(release_path)} && {release_commands.probe(image, base_url, assets)}"
    result = conn.run(command, warn=True, hide=True, in_stream=False)
    for line in result.stdout.splitlines():
        print(f"   {line}")
    if not result.ok:
        raise StepFailed("health checks", result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr.strip()[-500:])


def restore_previous(conn, app_dir: str, current: str, variant: str, project: str) -> None:
    if current:
        print(f"   health checks failed: starting release {current} again")
        conn.run(release_commands.in_release(app_dir, current, sh(compose_commands.up(variant, project))), warn=True, hide=True, in_stream=False)


def _json(text: str | None) -> dict:
    import json

    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {}


ns = Collection("deploy")
ns.add_task(deploy, default=True)
