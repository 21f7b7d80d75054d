"""The Compose engine: how a release reaches one host and takes its traffic (`Host`'s part of the
release pipeline, tasks/pipeline.py): the release's files and images, Postgres and NATS with the
schema read in one round trip, activation by `commands/rollout.activation`, the probe, and putting
the previous release back. `SwarmHost` (tasks/swarm.py) overrides what a swarm does differently."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

from . import guards, localhost, planning
from .commands import compose as compose_commands
from .commands import db as db_commands
from .commands import definitions
from .commands import fingerprint as fingerprints
from .commands import images as image_commands
from .commands import managed
from .commands import notify as notify_commands
from .commands import pitr as pitr_commands
from .commands import release as release_commands
from .commands import schema as schema_commands
from .commands import rollout, sh
from .commands import status as status_commands
from .settings import PROJECT_ROOT
from .settings_managed import ca_text
from .shipping import ship_images_to
from .steps import StepFailed

if TYPE_CHECKING:
    from .host import Host, Release


class ComposeEngine:
    """Mixed into `Host` (tasks/host.py), whose connection, settings, context and steps it uses."""

    def ensure_image(self, release: Release, step: str = "build backend image") -> None:
        build = sh(compose_commands.build_backend(self.ctx))
        self.run(self.in_release(release.id, release_commands.image_present_or_build(release.image,
                                                                                     build)), step,
                 hide=False)

    def probe_command(self, release: Release) -> str:
        """The release's health probe: through the published port, or while a recovery keeps the
        entry in maintenance (`self.recovering`) from inside nginx, the one client it lets read."""
        if self.recovering:
            return release_commands.probe_from_entry(self.ctx, release.image, list(release.assets))
        return release_commands.probe(release.image, self.base_url, list(release.assets))

    def probe(self, release: Release) -> None:
        command = self.in_release(release.id, self.probe_command(release))
        result = self.probe_run(command)
        for line in result.stdout.splitlines():
            print(f"   {line}")
        if not result.ok:
            out = result.stdout.strip()
            raise StepFailed("health checks", out.splitlines()[-1] if out
                             else result.stderr.strip()[-500:])

    def activate(self, release: Release, *, backend: bool = True, then: str = "") -> None:
        """Move traffic to `release` without dropping requests and prove it with the probe, in one
        round trip (commands/rollout.activation): the API and worker are replaced only when
        `backend` (a dashboard-only release just switches `current` and reloads nginx); `then`
        runs after the checks passed (recording the release). Each step gets its own row."""
        stream = self.steps.remote()
        result = self.conn.run(self.activation_script(release, backend=backend, then=then),
                               warn=True, hide="stderr",
                               out_stream=stream)
        stream.finish(result.ok)
        if not result.ok:
            # the probe's own verdicts
            failed_checks = [line for line in stream.lines if line.startswith("FAIL")]
            output = (result.stderr.strip() or "\n".join(stream.lines[-8:]))[-1500:]
            raise StepFailed(stream.current or "activate",
                             self.redact("; ".join(failed_checks) if failed_checks
                                         else f"exit {result.exited}: {output}"))

    def prepare_release(self, release: Release, files: list[tuple[str, int, str]],
                        images: list[str]) -> tuple[set[str], list[tuple[str, dict]]]:
        """Send the release's own files (settings, release.yml, RELEASE.json, the alert program) as
        one tar into the lock's 0700 inbox, then lay the release out, unpack them and report which
        of `images` the host has and the kept releases: two round trips. Call inside `locked` (the
        inbox is the lock's)."""
        self.conn.put(io.BytesIO(release_commands.files_archive(files)),
                      remote=f"{self.ctx.inbox}/{release_commands.RELEASE_TAR}")
        out = self.run(release_commands.unpack_release(self.ctx, release.id) + "; "
                       + image_commands.present(images)
                       + "; " + release_commands.list_releases(self.ctx), "prepare release").stdout
        return image_commands.parse_present(out), release_commands.parse_releases(out)[0]

    def start_backend(self, release: Release) -> schema_commands.SchemaState:
        """One round trip: build the backend image on the host if it is missing, start Postgres and
        NATS, and read the database's schema state (fails closed: see SchemaState.readable)."""
        stream = self.steps.remote()
        result = self.conn.run(self.start_backend_script(release), warn=True, hide="stderr",
                               out_stream=stream)
        stream.finish(result.ok)
        if not result.ok:
            raise StepFailed(stream.current or "start backend",
                             self.redact(f"exit {result.exited}: {result.stderr.strip()[-1500:]}"))
        return schema_commands.parse_schema("\n".join(stream.facts))

    def start_backend_script(self, release: Release) -> str:
        present_or_build = release_commands.image_present_or_build
        build = present_or_build(release.image, sh(compose_commands.build_backend(self.ctx)))
        if release.postgres_image:
            build += "\n" + present_or_build(release.postgres_image,
                                             sh(compose_commands.build_postgres(self.ctx)))
        return rollout.start_backend(self.ctx, release.id, build,
                                     schema_commands.schema_state(self.ctx, release.id,
                                                                   self.settings.db_wait_seconds))

    def ensure_archive(self) -> None:
        """The WAL archive ready (stanza, first full backup); a failure is a warning, not a failed
        deploy (the database serves as before; `doctor` keeps saying so)."""
        result = self.conn.run(pitr_commands.ensure_stanza(self.ctx), warn=True, hide=True)
        state = release_commands.parse_facts("\n".join(line[len("@@fact "):]
                                                       for line in result.stdout.splitlines()
                                                       if line.startswith("@@fact "))).get("pitr",
                                                                                           "failed")
        for line in result.stdout.splitlines():
            if not line.startswith("@@fact "):
                print(line, flush=True)
        if state != "ok":
            print(f"   WARNING: the WAL archive is not ready ({state}): "
                  + self.redact(" ".join(result.stderr.strip().splitlines()[-2:]) or "no output")
                  + f". Restores to a moment are not possible until it is; `fab -H {self.name} "
                    "doctor` checks it.", flush=True)

    def activation_script(self, release: Release, *, backend: bool = True, then: str = "") -> str:
        probe = self.probe_command(release)
        live = self.current_meta
        nginx_same = (bool(live.get("stack_fingerprint"))
                      and live.get("stack_fingerprint") == release.meta.get("stack_fingerprint"))
        return rollout.activation(self.ctx, release.id, backend=backend, probe=probe, then=then,
                                  nginx_same=nginx_same)

    def pending_definitions(self, release_dir: str) -> list[str]:
        """The kept services (postgres, nats, nginx) whose running container differs from their
        definition in `release_dir` (commands/definitions.py); none on a swarm."""
        script = definitions.pending(self.ctx, release_dir)
        return [] if script == "true" else definitions.parse_pending(self.probe_run(script).stdout)

    def report_pending(self, release_id: str, action: str = "deploy") -> None:
        """Say once, after a deploy or rollback, which kept services still run their previous
        definition and how to apply the release's."""
        pending = self.pending_definitions(self.ctx.release_dir(release_id))
        for line in definitions.notice(self.name, release_id, pending, action):
            print(line, flush=True)

    def check_running(self) -> list[str]:
        """What is wrong with the live stack as Docker sees it (nothing: []), in one round trip:
        every service has a running container and none is unhealthy."""
        out = self.conn.run(rollout.running_services(self.ctx), hide=True, warn=True).stdout
        return rollout.stack_problems(out, self.ctx.services(rollout.STACK_SERVICES))

    def put_back(self, previous: str, failed: str, marked: bool = True,
                 backend: bool = True) -> str:
        """Put `previous` back (with its own settings) after `failed` did not pass its checks
        (`backend=False`: `failed` changed only the dashboard, so only `current` and nginx go
        back); returns a sentence for the error message."""
        if not previous:
            self.probe_run(sh(rollout.remove_current(self.ctx)))
            return " There is no earlier release to go back to; `current` was removed."
        print(f"   rolling back automatically to {previous}")
        try:
            release = self.release(previous)
            if backend:
                self.ensure_image(release, "rebuild previous image")
            self.activate(release, backend=backend)
        except StepFailed as again:
            return (f" Automatic rollback to {previous} ALSO failed ({again.detail}); run `fab -H "
                    f"{self.name} rollback --to {previous}`.")
        self.put_back_release = previous
        return f" Release {previous} was put back automatically and is serving" + (f"; {failed} is "
                                                                                   "marked failed."
                                                                                   if marked
                                                                                   else ".")

    # --- the Compose engine's part of the release pipeline (tasks/pipeline.py) ---------------
    sent_paths = fingerprints.SENT_PATHS
    images_step = "images the host needs"

    def release_images(self) -> tuple[str, str]:
        """The backend and Postgres images a release of this checkout runs (tagged by content)."""
        return (image_commands.backend_image(PROJECT_ROOT, self.ctx.project),
                image_commands.postgres_image(PROJECT_ROOT, self.ctx.project))

    def fingerprint(self, plan) -> tuple[str, dict]:
        """The release's fingerprint and what it records to tell, next time, which containers a
        release may leave running (the backend's and nginx's own fingerprints)."""
        env, variant = plan.env_text, self.variant
        backend = fingerprints.backend_fingerprint
        return (fingerprints.release_fingerprint(PROJECT_ROOT, env, variant),
                {"compose": variant, "backend_fingerprint": backend(PROJECT_ROOT, env, variant),
                 "stack_fingerprint": backend(PROJECT_ROOT, env, variant,
                                              fingerprints.STACK_PATHS)})

    def serving_on(self) -> str:
        """Where a live release serves, for the deploy's last line."""
        return self.name

    def describe(self, plan) -> str:
        rid = plan.release.id
        return (f"{rid} -> {self.name}:{self.ctx.release_dir(rid)} (Compose {self.variant})"
                + ("" if plan.backend else
                   f"; dashboard only: the API and worker of {plan.backend_release} serve on"))

    def build_place(self) -> str:
        return image_commands.backend_build_place(self.settings.build_backend,
                                                  localhost.ok(["docker", "info"]))

    def images_needed(self, release: Release, place: str) -> list[str]:
        return image_commands.images_needed(PROJECT_ROOT, place, release.image,
                                            release.postgres_image)

    def prepare(self, plan) -> tuple[set[str], list[tuple[str, dict]]]:
        """The release's own files sent and unpacked; (images the host has, the kept releases)."""
        needed = self.images_needed(plan.release, self.build_place()) if plan.backend else []
        return self.prepare_release(plan.release, self.release_files(plan), needed)

    def release_files(self, plan) -> list[tuple[str, int, str]]:
        """The files a release writes besides its rsync'd tree, relative to APP_DIR, with modes:
        its settings (0600), release.yml, RELEASE.json, the alert program and its channels."""
        rid, s = plan.release.id, self.settings
        conf = notify_commands.conf_text(self.ctx, telegram_api_base_url=s.telegram_api_base_url,
                                         bot_token=s.telegram_bot_token.reveal(),
                                         chat_id=s.alert_telegram_chat_id,
                                         webhook_url=s.alert_webhook_url.reveal())
        override = compose_commands.release_override(plan.image, plan.backend_release,
                                                     postgres_image=plan.release.postgres_image,
                                                     variant=self.variant,
                                                     managed_db=self.ctx.managed_db)
        meta = json.dumps(plan.release.recorded("deploying"), sort_keys=True) + "\n"
        return [*self.managed_files(rid), (f"env/{rid}.env", 0o600, plan.env_text),
                (f"releases/{rid}/release.yml", 0o644, override),
                (f"releases/{rid}/RELEASE.json", 0o644, meta),
                (f"bin/{notify_commands.SCRIPT_NAME}", 0o700, notify_commands.NOTIFY_SCRIPT),
                (f"bin/{notify_commands.CONF_NAME}", 0o600, conf),
                (f"env/{db_commands.APP_ROLE_FILE}", 0o600,
                 db_commands.app_role_script(s.app_db_user, s.postgres_user,
                                             s.postgres_password.reveal(), s.postgres_db))]

    def managed_files(self, rid: str) -> list[tuple[str, int, str]]:
        """With a managed database: the release's compose.managed.yml and the server's CA
        (commands/managed.py)."""
        if not self.ctx.managed_db:
            return []
        compose_yml = (PROJECT_ROOT / "compose.yml").read_text()
        return [(f"releases/{rid}/{managed.MANAGED_FILE}", 0o644,
                 managed.managed_compose(compose_yml)),
                (managed.CA_FILE, 0o644,
                 ca_text(self.settings.database_ca_file))]

    def provide_images(self, plan, on_host: set[str]) -> None:
        """Every image the release needs on the host (`on_host`: what it has): the backend (and
        Postgres) built here when that is the setting, and what the host lacks (only that) sent,
        compressed, with progress."""
        release, place = plan.release, self.build_place()
        local_docker = localhost.ok(["docker", "info"])
        needed = self.images_needed(release, place)
        for image, context in image_commands.built_images(PROJECT_ROOT, release.image,
                                                          release.postgres_image):
            if place == "local" and image not in on_host:
                build_here(image, context, self.settings.build_backend)
                docker_id = self.facts.get("docker_id")
                if docker_id and docker_id == localhost.docker_id():
                    # the host's Docker is this machine's: it has it now
                    on_host = on_host | {image}
            if place == "host":
                needed.remove(image)  # built on the host in the next step
        here = {i for i in needed if local_docker and localhost.ok(["docker", "image", "inspect",
                                                                    i])}
        mode = self.settings.ship_images
        ship, lacking = image_commands.image_plan(needed, on_host, here, mode)
        if lacking and mode == "always":
            raise StepFailed(self.images_step, "SHIP_IMAGES=always, but this machine does not have "
                                               f"{', '.join(lacking)} to send; pull or build them "
                                               f"here first.")
        if ship:
            self.ship_images(ship)
        else:
            print(f"   the host has {len(needed) - len(lacking)} of {len(needed)} images"
                  + (f"; it pulls {', '.join(lacking)} itself" if lacking else ""))

    def start_data(self, plan) -> tuple[schema_commands.SchemaState, "Host"]:
        """Postgres and NATS up (images built on the host when that is the place), the schema
        read: one round trip; the data is here."""
        return self.start_backend(plan.release), self

    def migrate_command(self, release: Release) -> str:
        return self.in_release(release.id, compose_commands.migrate(self.ctx))

    def app_role_command(self, release: Release) -> str:
        return db_commands.ensure_app_role(self.ctx)

    def upload_options(self, release_id: str, current: str) -> dict:
        """rsync of a release's files (the deploy, and its dry run): unchanged files become hard
        links to the current release's copies."""
        return dict(sources=list(self.sent_paths),
                    remote_path=f"{self.ctx.release_dir(release_id)}/",
                    cwd=str(PROJECT_ROOT), relative=True, excludes=fingerprints.RSYNC_EXCLUDES,
                    link_dest=f"../{current}" if current else None, delete=False)

    def preflight_checks(self, env: str | None, *, table: bool = False) -> None:
        """Before a deploy changes anything: the stack's memory and the data's PostgreSQL major."""
        guards.check_memory_budget(self, table=table)
        guards.check_postgres_major(self, env)

    def require_one_host(self, action: str) -> None:
        """`action` works on this engine (one Compose host); a swarm refuses it, before changing
        anything."""

    def require_compose_services(self, action: str) -> None:
        """`action` recreates Compose services of this host; a swarm refuses it."""

    def cluster_state(self) -> dict | None:
        """The swarm as its manager sees it (nodes, services, tasks); None on one host."""
        return None

    def nginx_check_command(self) -> str:
        """`nginx -t` of the current release's config with the shared conf.d."""
        return self.in_release(self.current_id, sh(rollout.nginx_check(self.ctx, self.current_id)))

    def dry_run_plan(self, plan) -> list:
        """`deploy --dry-run`'s engine part (tasks/planning.py): the planned commands."""
        return planning.compose_dry_run(self, plan)

    def record_command(self, release: Release, prune: list[str]) -> str:
        """Run once every check passed: the release recorded `ok`; releases beyond KEEP_RELEASES
        removed (with their stack files on a swarm) and unused images; the sampler installed."""
        ctx, project = self.ctx, self.ctx.project
        return "; ".join([release_commands.write_meta(ctx, release.id, release.recorded("ok")),
                          release_commands.remove_releases(ctx, prune),
                          release_commands.prune_images(ctx, f"{project}-backend"),
                          release_commands.prune_images(ctx, f"{project}-postgres",
                                                        "postgres_image"),
                          status_commands.install_sampler(self.absolute_ctx)])

    # --- images ---------------------------------------------------------------------------
    def images_present(self, images: list[str]) -> set[str]:
        return image_commands.parse_present(self.conn.run(image_commands.present(images),
                                                          hide=True).stdout)

    def ship_images(self, images: list[str], report_every: float = 3.0) -> int:
        """Stream `docker save | gzip` from this machine, less the layers the host has, into the
        host's `docker load` over the connection's own SSH trust (tasks/shipping.py)."""
        return ship_images_to([self], images, report_every)


def build_here(image: str, context: Path, setting: str) -> None:
    """Build a release's image on this machine when it lacks it."""
    if localhost.ok(["docker", "image", "inspect", image]):
        return
    print(f"   building {image} here (BUILD_BACKEND={setting})", flush=True)
    built = localhost.run(image_commands.local_build(image, context), check=False)
    if built.returncode:
        raise StepFailed(f"build {context.name} image here", built.stderr.strip()[-800:])
