"""`fab -H HOST deploy`: build, ship a release, migrate, replace the API without downtime,
prove health, switch `current`; roll back automatically when a check fails."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from invoke import Collection, Context, Exit, task

from . import remote
from .audit import audited
from .build import FRONTEND, build_frontend, git_commit, tree_hash
from .commands import compose as compose_commands
from .commands import release as release_commands
from .commands import rollout
from .commands import sh
from .lock import held
from .operator import identity, now_iso
from .settings import PROJECT_ROOT, Settings, env_file_path
from .steps import StepFailed, Steps, run_checked

SENT_PATHS = ("compose.yml", "docker-compose.production.yml", "nginx", "backend", "frontend/dist", release_commands.PROBE_PATH)
RSYNC_EXCLUDES = ("__pycache__", "*.pyc", ".pytest_cache", ".gitkeep")


def new_release_id(now: datetime, commit: str) -> str:
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{re.sub(r'[^0-9a-z]+', '', commit.lower())[:12] or 'nogit'}"


def dist_assets(dist: Path) -> list[str]:
    """The hashed asset paths index.html references (what the probe expects to be served)."""
    return sorted(set(re.findall(r'(?:src|href)="(/assets/[^"]+)"', (dist / "index.html").read_text())))


def render_env(settings: Settings, env_file: Path | None, app_root: str) -> str:
    """The host's .env: the local file's lines with every validated setting applied (env wins)."""
    from dataclasses import fields

    from dotenv import dotenv_values

    values: dict[str, str] = {}
    if env_file and env_file.is_file():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    for f in fields(Settings):
        value = getattr(settings, f.name)
        values[Settings.env_key(f.name)] = value.reveal() if hasattr(value, "reveal") else str(value)
    values["APP_ROOT"] = app_root  # absolute APP_DIR on the host, mounted into nginx at /srv/app
    return "".join(f"{key}={_env_quote(value)}\n" for key, value in values.items())


def _env_quote(value: str) -> str:
    if re.fullmatch(r"[\w@%+=:,./-]*", value):
        return value
    return "'" + value + "'" if "'" not in value else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def release_fingerprint(root: Path, env_text: str, variant: str) -> str:
    digest = hashlib.sha256(variant.encode() + b"\0" + env_text.encode())
    for rel in SENT_PATHS:
        path = root / rel
        digest.update(rel.encode() + b"\0")
        digest.update((tree_hash(path, {"__pycache__", ".pytest_cache"}) if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()).encode())
    return digest.hexdigest()


def image_repo(project: str) -> str:
    return f"{project}-backend"


def backend_image(root: Path, project: str) -> str:
    """Backend images are tagged by the content of backend/: an unchanged backend is not rebuilt."""
    return f"{image_repo(project)}:{tree_hash(root / 'backend', {'__pycache__', '.pytest_cache'})[:12]}"


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


def app_root(facts: dict[str, str], app_dir: str) -> str:
    return app_dir if app_dir.startswith("/") else f"{facts.get('home', '').rstrip('/')}/{app_dir}"


@dataclass
class Target:
    """Where and with what a release is activated."""

    conn: object
    settings: Settings
    variant: str
    steps: Steps
    facts: dict = field(default_factory=dict)

    @property
    def app_dir(self) -> str:
        return self.settings.app_dir

    @property
    def project(self) -> str:
        return self.settings.compose_project

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.http_port}"

    def run(self, command: str, step: str, **kwargs):
        return run_checked(self.conn, command, step, secrets=self.settings.secret_values(), **kwargs)

    def in_release(self, release_id: str, command: str) -> str:
        return release_commands.in_release(self.app_dir, release_id, command)


def preflight(conn, settings: Settings, wanted: str) -> tuple[dict[str, str], str]:
    result = run_checked(conn, release_commands.preflight(settings.app_dir), "preflight")
    facts = release_commands.parse_preflight(result.stdout)
    problem = host_problem(facts, conn.original_host, wanted)
    if problem:
        raise Exit(problem + " Nothing was changed on the server.", code=3)
    return facts, choose_compose(facts, wanted)


def probe(t: Target, release_id: str, image: str, assets: list[str]) -> None:
    command = t.in_release(release_id, release_commands.probe(image, t.base_url, assets))
    result = t.conn.run(command, warn=True, hide=True, in_stream=False)
    for line in result.stdout.splitlines():
        print(f"   {line}")
    if not result.ok:
        out = result.stdout.strip()
        raise StepFailed("health checks", out.splitlines()[-1] if out else result.stderr.strip()[-500:])


def activate(t: Target, release_id: str, image: str, assets: list[str]) -> None:
    """Move traffic to `release_id` without dropping requests, then prove it with the probe."""
    with t.steps.step("replace api (new beside old)"):
        out = t.run(t.in_release(release_id, rollout.api_rollout(t.variant, t.project)), "replace api")
        print(f"   {out.stdout.strip().splitlines()[-1]}")
    with t.steps.step("restart worker (graceful)"):
        t.run(t.in_release(release_id, sh(rollout.worker_restart(t.variant, t.project))), "restart worker")
    with t.steps.step("switch current and reload nginx"):
        t.run(t.in_release(release_id, sh(rollout.nginx_check(t.variant, t.project, release_id))), "nginx -t")
        t.run(rollout.switch_current(t.app_dir, release_id) + " && "
              + t.in_release(release_id, rollout.nginx_up_and_reload(t.variant, t.project)), "switch current")
    with t.steps.step("health checks"):
        probe(t, release_id, image, assets)


def read_meta(t: Target, release_id: str) -> dict:
    out = t.conn.run(f"cat {shlex.quote(t.app_dir)}/releases/{shlex.quote(release_id)}/RELEASE.json 2>/dev/null || true",
                     hide=True, warn=True, in_stream=False).stdout
    try:
        return json.loads(out) if out.strip() else {}
    except ValueError:
        return {}


def ensure_image(t: Target, release_id: str, image: str, step: str = "build backend image") -> None:
    build = sh(compose_commands.build_backend(t.variant, t.project))
    t.run(t.in_release(release_id, release_commands.image_present_or_build(image, build)), step, hide=False)


def restore(t: Target, previous: str, failed: str, marked: bool = True) -> str:
    """Put `previous` back after `failed` did not pass its checks; returns a sentence for the error."""
    if not previous:
        t.conn.run(f"rm -f {shlex.quote(t.app_dir)}/current", warn=True, hide=True, in_stream=False)
        return " There is no earlier release to go back to; `current` was removed."
    print(f"   rolling back automatically to {previous}")
    meta = read_meta(t, previous)
    image = meta.get("backend_image", "")
    assets = meta.get("assets", [])
    try:
        ensure_image(t, previous, image, "rebuild previous image")
        activate(t, previous, image, assets)
    except StepFailed as again:
        return f" Automatic rollback to {previous} ALSO failed ({again.detail}); run `fab rollback --to {previous}`."
    return f" Release {previous} was put back automatically and is serving" + (f"; {failed} is marked failed." if marked else ".")


@task(help={
    "skip_build": "Deploy the frontend/dist already built (CI builds once, then deploys with this).",
    "compose": "Which Docker Compose to use on the host: auto (v2 when present, else v1), v1 or v2.",
    "wait": "If another deploy or rollback holds the host's lock, wait for it instead of failing.",
})
def deploy(c, skip_build=False, compose="auto", wait=False):
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
        if skip_build:
            steps.skip("build frontend", "--skip-build")
        else:
            with steps.step("build frontend"):
                build_frontend(Context(config=c.config), FRONTEND)
        t = Target(conn, settings, variant, steps, facts)
        with held(conn, settings.app_dir, "deploy", wait=wait):
            if wait:
                t.facts, _ = preflight(conn, settings, compose)
            outcome: dict = {}
            with audited(conn, settings.app_dir, "deploy", outcome):
                run_deploy(t, env_file, outcome)
    except StepFailed as failure:
        steps.fail(f"Deploy to {c.original_host} failed at step '{failure.step}': {failure.detail}")
    steps.print_table()
    print(f"  remote commands: {remote.CountingConnection.remote_commands} (+1 rsync session)")


def run_deploy(t: Target, env_file, outcome: dict) -> None:
    conn, settings, app_dir, steps = t.conn, t.settings, t.app_dir, t.steps
    dist = FRONTEND / "dist"
    env_text = render_env(settings, env_file, app_root(t.facts, app_dir))
    fingerprint = release_fingerprint(PROJECT_ROOT, env_text, t.variant)
    image = backend_image(PROJECT_ROOT, t.project)
    assets = dist_assets(dist)
    current = Path(t.facts.get("current") or "").name
    current_meta = _json(t.facts.get("current_meta"))

    if current and current_meta.get("fingerprint") == fingerprint:
        outcome.update(release=current, result="unchanged")
        print(f"Nothing changed since release {current}: checking that it still serves.")
        with steps.step("health checks"):
            probe(t, current, image, assets)
        print(f"Release {current} is current and healthy on {conn.original_host}.")
        return

    release_id = new_release_id(datetime.now(timezone.utc), git_commit())
    outcome["release"] = release_id
    release_path = f"{app_dir}/releases/{release_id}"
    meta = {"release": release_id, "deployed_at": now_iso(), **{f"deployed_{k}" if k in ("user", "machine") else k: v for k, v in identity().items()},
            "fingerprint": fingerprint, "backend_image": image, "compose": t.variant, "assets": assets,
            "previous": current, "result": "deploying"}
    print(f"Release {release_id} -> {conn.original_host}:{release_path} (Compose {t.variant})")
    with steps.step("prepare release and upload .env"):
        t.run(release_commands.prepare(app_dir, release_id, compose_commands.release_override(image, release_id)), "prepare release")
        conn.put(io.BytesIO(env_text.encode()), remote=release_commands.env_upload_path(app_dir))
        t.run(sh(release_commands.install_env(app_dir)) + f" && mkdir -p {shlex.quote(app_dir)}/shared/nginx/conf.d {shlex.quote(app_dir)}/shared/acme && "
              + release_commands.write_meta(app_dir, release_id, meta), "install .env")
    try:
        ship_release(t, release_id, release_path, current, image, assets, meta)
    except StepFailed as failure:
        conn.run(release_commands.write_meta(app_dir, release_id, {**meta, "result": "failed", "failure": failure.detail[:300]}),
                 hide=True, warn=True, in_stream=False)
        outcome["detail"] = failure.detail
        raise


def ship_release(t: Target, release_id: str, release_path: str, current: str, image: str, assets: list[str], meta: dict) -> None:
    conn, settings, app_dir, steps = t.conn, t.settings, t.app_dir, t.steps
    with steps.step("upload files (rsync)"):
        result = remote.rsync(conn, list(SENT_PATHS), f"{release_path}/", cwd=str(PROJECT_ROOT), relative=True,
                              excludes=RSYNC_EXCLUDES, link_dest=f"../{current}" if current else None, delete=False)
        if not result.ok:
            raise StepFailed("upload files", f"rsync exit {result.exited}: {result.stderr.strip()[-800:]}")
        sent = parse_rsync_sent(result.stdout)
        print(f"   sent {sent} bytes{' (unchanged files hard-linked from ' + current + ')' if current else ''}")
    with steps.step("build backend image"):
        ensure_image(t, release_id, image)
    with steps.step("start postgres and nats"):
        t.run(t.in_release(release_id, sh(rollout.data_services_up(t.variant, t.project))), "start postgres and nats")
    backup_set = ""
    if current:
        revisions = release_commands.parse_preflight(conn.run(
            release_commands.schema_revisions(app_dir, release_id, t.project), hide=True, warn=True, in_stream=False).stdout)
        if release_commands.migrations_pending(revisions):
            from .backup import run_backup

            with steps.step("back up database before migrating"):
                backup_set = run_backup(conn, settings, db_only=True)
        else:
            steps.skip("back up database before migrating", "no pending migration")
    with steps.step("migrate database"):
        try:
            t.run(t.in_release(release_id, sh(compose_commands.migrate(t.variant, t.project))), "migrate database", hide=False)
        except StepFailed as failure:
            if not backup_set:
                raise
            from .backup import restore_set

            restore_set(t, backup_set)
            raise StepFailed(failure.step, f"{failure.detail} The database was restored from backup {backup_set} "
                                           f"and release {current} keeps serving.") from None
    try:
        activate(t, release_id, image, assets)
    except StepFailed as failure:
        raise StepFailed(failure.step, failure.detail + restore(t, current, release_id)) from None
    with steps.step("record release and prune"):
        out = t.run(release_commands.finalize(app_dir, release_id, {**meta, "result": "ok"}, settings.keep_releases,
                                              image_repo(t.project)), "record release")
        for line in out.stdout.splitlines():
            print(f"   {line}")
    print(f"Release {release_id} is live on {conn.original_host}.")


def _json(text: str | None) -> dict:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {}


ns = Collection("deploy")
ns.add_task(deploy, default=True)
