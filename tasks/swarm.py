"""The stack on a Docker Swarm (ENGINE=swarm, or a swarm manager with ENGINE=auto): the host layer's
operations where a swarm differs from one Compose host. `open_host` gives the tasks a `SwarmHost`
when the host runs the stack on a swarm, and a `Host` otherwise, so `deploy`, `rollback`, `status`
and `cluster.deploy` take one code path per engine, not one per task:

    ensure_image   the release's images on every node (`docker save | docker load` over SSH)
    activate       `docker stack deploy` of the release's stack file, awaited until converged
                   (start-first, health-checked; Swarm rolls an update back by itself), then
                   `current` switched, nginx reloaded and the same health probe as one host
    put_back       Host's own: ensure_image + activate of the previous release
    deploy_release a new release: rendered stack, images, data services, WAL archive, migrations
                   once, then activate

Commands and parsers: tasks/commands/cluster.py. The stack is compose.yml +
docker-compose.production.yml + swarm.yml, rendered for `docker stack deploy`.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml
from fabric import Connection
from invoke import Exit

from . import machine, remote
from .build import FRONTEND, git_commit
from .commands import cluster as commands
from .commands.build import paths_digest
from .commands import compose as compose_commands
from .commands import db as db_commands
from .commands import images as image_commands
from .commands import pitr as pitr_commands
from .commands import release as release_commands
from .commands import status as status_commands
from .commands import rollout, sh
from .exits import ExitCode
from .host import Host, Release, absolute_app_dir, ship_images_to
from .identity import identity, now_iso
from .settings import PROJECT_ROOT, Settings, env_values
from .steps import StepFailed, Steps

STACK_SOURCES = ("compose.yml", "docker-compose.production.yml", "swarm.yml")
SENT_PATHS = (*STACK_SOURCES, "nginx", "backend", "postgres", "frontend/dist", release_commands.PROBE_PATH)
RSYNC_EXCLUDES = ("__pycache__", "*.pyc", ".pytest_cache", ".gitkeep")
DATA_SERVICES = {"postgres", "nats"}
CONVERGE_SECONDS = 300
APP_ROLE_STEP = "the app's database role and its grants"


def open_host(c, settings: Settings | None = None, *, compose: str = "auto", steps: Steps | None = None) -> Host:
    """`Host.open`, as a `SwarmHost` when the host runs the stack on a swarm (`Host.engine`)."""
    host = Host.open(c, settings, compose=compose, steps=steps)
    return SwarmHost.adopt(host) if host.engine == "swarm" else host


def manager_status(conn, stack: str) -> dict:
    return commands.parse_status(conn.run(commands.status(stack), hide=True, warn=True).stdout)


def load_sources(root: Path) -> list[dict]:
    return [yaml.safe_load((root / name).read_text()) or {} for name in STACK_SOURCES]


class SwarmHost(Host):
    """A swarm manager: the stack runs as `docker stack deploy`, its images on every node."""

    converge_seconds: float = CONVERGE_SECONDS

    @classmethod
    def adopt(cls, host: Host) -> "SwarmHost":
        swarm = cls(host.conn, host.settings, host.variant, host.facts, host.steps)
        swarm.engine, swarm.engine_problem, swarm.ctx = host.engine, host.engine_problem, host.ctx
        return swarm

    @property
    def stack(self) -> str:
        return self.ctx.project

    def require_manager(self) -> None:
        if self.engine_problem:
            raise Exit(f"{self.engine_problem} Nothing was changed.", code=ExitCode.HOST_NOT_READY)

    def state(self) -> dict:
        """Nodes, the stack's services (replicas, update state) and tasks, as the manager sees them."""
        return manager_status(self.conn, self.stack)

    # --- nodes and images -------------------------------------------------------------------
    def node_hosts(self, nodes: list[dict], step: str) -> list[tuple[dict, Host]]:
        """Every node that is up, opened over SSH by the alias it joined with (this connection for the manager)."""
        out: list[tuple[dict, Host]] = []
        for node in nodes:
            alias = node["alias"]
            if alias == self.name:
                out.append((node, self))
                continue
            if not alias:
                raise StepFailed(step, f"node {node['hostname']} has no {commands.LABEL_ALIAS} label, so it cannot be "
                                       f"reached over SSH: join it with cluster.init")
            if node["state"] != "ready" or node["availability"] == "drain":
                print(f"   {alias}: {node['state']}/{node['availability']}: skipped (gets images when it is back: deploy again)")
                continue
            try:
                out.append((node, Host.open(Connection(alias, config=self.conn.config), self.settings)))
            except Exit as refused:
                raise StepFailed(step, f"node {alias} cannot be used: {refused.message}") from None
        return out

    def data_host(self, nodes: list[dict] | None = None) -> Host:
        """Where Postgres runs: this manager when its task is here, else the node labelled
        tasktracker.data (over SSH, by its alias); StepFailed when neither can be reached."""
        if self.probe_run(self.ctx.container("postgres")).stdout.strip():
            return self
        nodes = nodes if nodes is not None else self.state()["nodes"]
        data = [host for node, host in self.node_hosts(nodes, "data node") if node["labels"].get(commands.LABEL_DATA) == "true"]
        if not data:
            raise StepFailed("data node", f"Postgres does not run on {self.name} and no reachable node has the label "
                                          f"{commands.LABEL_DATA}=true (`cluster.status` shows the nodes)")
        return data[0]

    def ship_to_nodes(self, nodes: list[dict], images: list[str], built: list[tuple[str, Path]],
                      step: str = "images on every node") -> None:
        """Every node that lacks an image gets it over SSH (no registry): `docker save | docker load`;
        `built` (image, build directory) are built here first when this machine lacks them."""
        for image, context in built:
            if not machine.ok(["docker", "image", "inspect", image]):
                print(f"   building {image} here", flush=True)
                result = machine.run(image_commands.local_build(image, context), check=False)
                if result.returncode:
                    raise StepFailed(f"build {context.name} image here", result.stderr.strip()[-800:])
            if self.pulled(image):
                started = time.monotonic()
                result = machine.run(image_commands.push(image), check=False)
                if result.returncode:
                    raise StepFailed(step, f"docker push {image} failed: {result.stderr.strip()[-500:]} (is this machine "
                                           f"logged in to {self.settings.registry}, and does Docker trust it?); nothing "
                                           f"on the swarm was changed")
                print(f"   pushed {image} in {time.monotonic() - started:.1f}s (the nodes pull it)", flush=True)
        images = [i for i in images if not self.pulled(i)]
        lacking: dict[tuple[str, ...], list[Host]] = {}  # the nodes that lack the same images
        for _node, host in self.node_hosts(nodes, step):
            missing = [i for i in images if i not in host.images_present(images)]
            if not missing:
                print(f"   {host.name}: has all {len(images)} images")
                continue
            absent = [i for i in missing if not machine.ok(["docker", "image", "inspect", i])]
            if absent:
                raise StepFailed(step, f"{host.name} lacks {', '.join(absent)} and this machine does not have "
                                       f"{'it' if len(absent) == 1 else 'them'} to send: deploy again from a checkout of "
                                       f"that release (its images are built here), or pick another release")
            lacking.setdefault(tuple(missing), []).append(host)
        for missing, hosts in lacking.items():
            ship_images_to(hosts, list(missing))  # one save, streamed to each of them at once

    def pulled(self, image: str) -> bool:
        """Whether the nodes pull this image from REGISTRY rather than getting it over SSH."""
        return bool(self.settings.registry) and image.startswith(self.settings.registry + "/")

    def ensure_image(self, release: Release, step: str = "images on every node") -> None:
        """The release's images (backend, Postgres) on every node that is up."""
        if not self.probe_run(f"test -f {commands.q(commands.stack_file(self.ctx, release.id))}").ok:
            raise StepFailed(step, f"release {release.id} has no stack file ({commands.stack_file(self.ctx, release.id)}): it "
                                   f"was not deployed to this swarm (a Compose release from before `cluster.init`?). Pick "
                                   f"a swarm release (`fab -H {self.name} releases`); nothing was changed")
        images = [release.image, *([release.postgres_image] if release.postgres_image else [])]
        self.ship_to_nodes(self.state()["nodes"], images, [], step)

    # --- rolling out ------------------------------------------------------------------------
    def wait_converged(self, services: list[str] | None, what: str, before: dict | None = None) -> float:
        started = time.monotonic()
        reasons: list[str] = []
        wanted = [self.ctx.service_name(s) for s in services] if services else None
        while time.monotonic() - started < self.converge_seconds:
            verdict, reasons = commands.convergence(self.state()["services"], wanted, before)
            if verdict == "done":
                return time.monotonic() - started
            if verdict == "failed":
                failed = " ".join(reason.split(":")[0] for reason in reasons)
                raise StepFailed(what, f"Swarm rolled the update back by itself ({'; '.join(reasons)}): the new tasks "
                                       f"did not pass their health checks, and the previous ones kept serving; `docker "
                                       f"service ps {failed} --no-trunc` on {self.name} says why.")
            time.sleep(2)
        raise StepFailed(what, f"not converged after {self.converge_seconds:.0f}s: {'; '.join(reasons)}")

    def activate(self, release: Release, *, backend: bool = True, then: str = "") -> None:
        """`docker stack deploy` of the release's stack file (start-first, health-checked, rolled back
        by Swarm on failure), awaited; then `current`, nginx and the probe as on one host. `backend`
        is ignored: Swarm changes only the services whose spec changed."""
        self.require_manager()
        stack_file = commands.stack_file(self.ctx, release.id)
        before = self.state()["services"]
        with self.steps.step("rolling update (docker stack deploy)"):
            out = self.run(f"test -f {commands.q(stack_file)} || {{ echo 'release {release.id} has no stack file: it was "
                           f"not deployed to a swarm' >&2; exit 1; }}; " + sh(commands.stack_deploy(self.stack, [stack_file], bool(self.settings.registry))),
                           "rolling update")
            for line in out.stdout.splitlines():
                print(f"   {line}")
            print(f"   converged in {self.wait_converged(None, 'rolling update', before):.1f}s", flush=True)
        with self.steps.step("switch current and reload nginx"):
            self.run(rollout.switch_current(self.ctx, release.id) + " && " + commands.nginx_reload(self.stack), "switch current")
        with self.steps.step("health checks"):
            self.probe(release)
        if then:
            self.run(then, "record release")

    def ensure_archive(self, nodes: list[dict] | None = None) -> None:
        """pgBackRest's stanza (and first full backup) on the data node, where Postgres runs."""
        host = self.data_host(nodes)
        out = host.run(pitr_commands.ensure_stanza(host.ctx, host.ctx.container("postgres")), "WAL archive", hide=True).stdout
        state = release_commands.parse_facts("\n".join(line[len("@@fact "):] for line in out.splitlines() if line.startswith("@@fact ")))
        print(f"   {host.name}: WAL archive {state.get('pitr', 'unknown')}")

    # --- a new release ----------------------------------------------------------------------
    def plan_release(self, env_file: Path | None, mesh: bool | None = None) -> tuple[Release, dict, bool]:
        """The new release (id, images, assets, metadata), its rendered stack and whether it publishes
        through the routing mesh; read-only, and it refuses (changing nothing) a manager where the
        single-host Compose stack still runs or a stack file that lacks a setting."""
        self.require_manager()
        ctx, stack = self.ctx, self.stack
        compose_left = self.probe_run(f"{ctx.with_engine('compose').containers('api')} | head -n 1").stdout.strip()
        if compose_left:
            raise Exit(f"The single-host Compose stack {stack} still runs on {self.name}: stop it first with `fab -H "
                       f"{self.name} compose.down` (its volumes stay, and the swarm's Postgres uses the same one: docs/several-hosts.md, "
                       f"\"From one VPS to a cluster\"). Nothing was changed.", code=ExitCode.REFUSED)
        swarm = commands.parse_facts(self.probe_run(commands.facts()).stdout)
        mesh = swarm["ipvs"] if mesh is None else mesh
        registry = self.settings.registry
        image = image_commands.in_registry(image_commands.backend_image(PROJECT_ROOT, stack), registry)
        postgres = image_commands.postgres_image(PROJECT_ROOT, stack)
        postgres = image_commands.in_registry(postgres, registry) if postgres else ""
        rid = release_commands.new_release_id(datetime.now(timezone.utc), git_commit())
        assets = tuple(release_commands.dist_assets((FRONTEND / "dist" / "index.html").read_text()))
        values = {**env_values(self.settings, env_file, absolute_app_dir(self.facts, ctx.app_dir)),
                  "BACKEND_IMAGE": image, **({"POSTGRES_IMAGE": postgres} if postgres else {}), "RELEASE_ID": rid}
        try:
            rendered = commands.render_stack(load_sources(PROJECT_ROOT), values, mesh=mesh)
            # What the release is, whatever its id: the stack as rendered without it, and every file sent.
            same = commands.dump_stack(commands.render_stack(load_sources(PROJECT_ROOT), {**values, "RELEASE_ID": ""}, mesh=mesh))
        except ValueError as err:
            raise Exit(f"The stack files need a setting: {err}. Nothing was changed.", code=ExitCode.USAGE) from None
        who = identity()
        release = Release(rid, image, assets, previous=self.current_id, result="deploying",
                          meta={"release": rid, "deployed_at": now_iso(), "deployed_user": who["user"],
                                "deployed_machine": who["machine"], "commit": who["commit"], "engine": "swarm",
                                "fingerprint": paths_digest(PROJECT_ROOT, SENT_PATHS, hashlib.sha256(b"swarm\0" + same.encode())),
                                **({"postgres_image": postgres} if postgres else {})})
        return release, rendered, mesh

    def deploy(self, env_file: Path | None, *, mesh: bool | None = None, wait: bool = False, action: str = "deploy") -> None:
        """A deploy on the swarm, in the host's lock with one audit line: nothing but an `unchanged` audit line
        when the checkout and settings are the live release's and every service runs all its replicas."""
        release, _, _ = self.plan_release(env_file, mesh)
        current = self.current_id
        if current and self.current_meta.get("fingerprint") == release.meta["fingerprint"]:
            services = self.state()["services"]
            verdict, reasons = commands.convergence(services, before=services)  # a past rollback is history
            if verdict == "done":
                print(f"Nothing changed since release {current} (same files, same settings); every service runs all its "
                      f"replicas on the swarm.")
                with self.audited(action, release=current) as outcome:
                    outcome["result"] = "unchanged"
                return
            print(f"Nothing changed since release {current}, but {'; '.join(reasons)}: deploying it again.")
        with self.locked(action, wait=wait), self.audited(action) as outcome:
            self.refresh_facts()  # another deploy may have gone first while this one waited for the lock
            self.deploy_release(env_file, outcome, mesh)

    def deploy_release(self, env_file: Path | None, outcome: dict, mesh: bool | None = None) -> None:
        """A new release on the swarm: its stack rendered from the three files, its images on every
        node, Postgres and NATS first, the WAL archive, migrations once, then `activate`."""
        release, rendered, mesh = self.plan_release(env_file, mesh)
        stack, rid, current = self.stack, release.id, release.previous
        outcome["release"] = rid
        print(f"Release {rid} -> stack {stack} via {self.name} ({'routing mesh' if mesh else 'dnsrr + host-mode ports: no IPVS'})")
        try:
            self._ship_and_migrate(release, rendered, current)
        except StepFailed as failure:
            self._record_failed(release, failure, outcome)
            raise
        try:
            self.activate(release, then=self.record_command(release))
        except StepFailed as failure:
            self._record_failed(release, failure, outcome)
            # Swarm rolls back only the services whose new tasks failed (the API); the others (the
            # worker runs the same image) go back with the previous release's whole stack file.
            raise StepFailed(failure.step, failure.detail + self.put_back(current, rid)) from None
        print(f"Release {rid} is live on the swarm ({len(self.state()['nodes'])} nodes).")

    def dry_run(self, env_file: Path | None, migrations: list[str]) -> None:
        """`deploy --dry-run` on a swarm: the release, the stack's services, what each node lacks, the
        migrations (`migrations`: deploy.dry_run_migrations' lines) and the commands that would change
        the swarm, in order; read-only (no build, no lock, no audit line)."""
        release, rendered, mesh = self.plan_release(env_file)
        ctx, stack, rid, current = self.ctx, self.stack, release.id, release.previous
        print(f"Dry run on {self.name} (a swarm manager): nothing is changed (no build, no lock, no audit line).")
        print(f"release: {rid} -> stack {stack}" + (f", replacing {current}" if current else ", the swarm's first release")
              + f" ({'routing mesh' if mesh else 'dnsrr + host-mode ports: no IPVS'})")
        print("services:")
        for name, service in sorted(rendered["services"].items()):
            deploy = service.get("deploy") or {}
            where = ", ".join((deploy.get("placement") or {}).get("constraints") or []) or "any node"
            order = (deploy.get("update_config") or {}).get("order", "stop-first")
            print(f"   {name:9} {service.get('image', '?'):44} replicas {deploy.get('replicas', 1)}  on {where}  update {order}")
        built = image_commands.built_images(PROJECT_ROOT, release.image, release.postgres_image)
        images = [*image_commands.stack_images(PROJECT_ROOT), *(i for i, _ in built)]
        print("images:")
        for image, _ in built:
            if not machine.ok(["docker", "image", "inspect", image]):
                print(f"   here: {image} would be built first")
            if self.pulled(image):
                print(f"   here: {image} would be pushed to {self.settings.registry} (the nodes pull it)")
        images = [i for i in images if not self.pulled(i)]
        shipping: list[tuple[str, list[str]]] = []
        for _node, host in self.node_hosts(self.state()["nodes"], "images on every node"):
            missing = [i for i in images if i not in host.images_present(images)]
            print(f"   {host.name}: " + (f"would get {', '.join(missing)}" if missing else f"has all {len(images)} images"))
            if missing:
                shipping.append((host.name, missing))
        print("migrations:")
        for line in migrations:
            print(f"   {line}")
        data_file, stack_file = commands.stack_file(ctx, rid, "data"), commands.stack_file(ctx, rid)
        planned = [(self.name, f"lay out {ctx.release_dir(rid)} and write the stack files (0600) in {commands.stack_dir(ctx, rid)}"),
                   ("here", f"rsync {' '.join(SENT_PATHS)} to {self.name}:{ctx.release_dir(rid)}/"),
                   *((name, f"docker load < (docker save {' '.join(missing)} from here, over SSH)") for name, missing in shipping),
                   (self.name, sh(commands.stack_deploy(stack, [data_file], bool(self.settings.registry))) + "  (Postgres and NATS, awaited)"),
                   *([("data node", "pgBackRest: the stanza and a first full backup when missing (WAL archive)")]
                     if release.postgres_image else []),
                   (self.name, sh(commands.migrate(ctx, rid, stack, release.image))),
                   (self.name, commands.ensure_app_role(ctx, rid, stack,
                                                        rendered["services"]["postgres"]["image"])),
                   (self.name, sh(commands.stack_deploy(stack, [stack_file], bool(self.settings.registry)))
                    + "  (start-first, awaited; Swarm rolls back a failure)"),
                   (self.name, rollout.switch_current(ctx, rid) + " && " + commands.nginx_reload(stack)),
                   (self.name, "the health probe, then RELEASE.json marked ok")]
        print(f"Commands that would change the swarm, in order (the deploy also takes {self.name}'s lock and appends one "
              f"line to {ctx.audit_log}; when the rolling update fails it puts {current or 'nothing'} back):")
        for n, (where, command) in enumerate(planned, 1):
            print(f"   {n:>2}. [{where}] {self.redact(command)}")

    def record_command(self, release: Release) -> str:
        """Once every check passed: the release recorded `ok`; releases beyond KEEP_RELEASES pruned with their
        stack files, and the manager's unused images; the metrics sampler installed (as on one host)."""
        rows, _ = self.releases()
        prune = release_commands.releases_to_prune(rows + [(release.id, release.recorded("ok"))], release.id,
                                                   self.settings.keep_releases)
        project = self.ctx.project
        return "; ".join([release_commands.write_meta(self.ctx, release.id, release.recorded("ok")),
                          release_commands.remove_releases(self.ctx, prune),
                          release_commands.prune_images(self.ctx, f"{project}-backend"),
                          release_commands.prune_images(self.ctx, f"{project}-postgres", "postgres_image"),
                          status_commands.install_sampler(self.absolute_ctx)])

    def migrate_database(self, release: Release, current: str, nodes: list[dict] | None = None) -> None:
        """Migrations once, in a one-off container of the new image on the stack's network. As on one
        host, the schema is read first where the data is (fail closed) and a database-only backup is
        taken there when migrations are pending (on a data node other than this manager the release's
        migrations are not there to compare, so it is taken whenever the database is not fresh)."""
        ctx, steps, rid = self.ctx, self.steps, release.id
        data = self.data_host(nodes)
        before = data.schema(rid)
        if not before.readable:
            raise StepFailed("migrate database", f"the database's revision could not be read on {data.name} "
                                                 f"({before.error or 'no answer'}), so the deploy stops before migrating "
                                                 f"(fail closed); {current or 'no release'} keeps serving")
        backup_set = ""
        if before.migrations_pending or (data is not self and not before.fresh):
            with steps.step("back up database before migrating"):
                backup_set = data.backup(db_only=True)
        else:
            steps.skip("back up database before migrating", "fresh database" if before.fresh else "no pending migration")
        with steps.step("migrate database (once)"):
            try:
                self.run(sh(commands.migrate(ctx, rid, self.stack, release.image)), "migrate database", hide=False)
            except StepFailed as failure:
                raise StepFailed(failure.step, f"{failure.detail} " + release_commands.migration_failure_detail(
                    before, data.schema(rid), backup_set, current, data.name)) from None

    def _record_failed(self, release: Release, failure: StepFailed, outcome: dict) -> None:
        self.probe_run(release_commands.write_meta(self.ctx, release.id, release.recorded("failed", failure=failure.detail[:300])))
        outcome["detail"] = failure.detail

    def _ship_and_migrate(self, release: Release, rendered: dict, current: str) -> None:
        ctx, stack, steps, rid = self.ctx, self.stack, self.steps, release.id
        with steps.step("prepare release"):
            self.run(release_commands.prepare(ctx, rid, compose_commands.release_override(release.image, rid)) + " && "
                     + sh(commands.prepare_stack_dir(ctx, rid)), "prepare release")
            stack_file, data_file = commands.stack_file(ctx, rid), commands.stack_file(ctx, rid, "data")
            self.put_text(commands.dump_stack(rendered), stack_file)
            self.put_text(commands.dump_stack(commands.only_services(rendered, DATA_SERVICES)), data_file)
            s = self.settings
            self.put_text(commands.docker_env_file(commands.migration_environment(rendered)),
                          f"{commands.stack_dir(ctx, rid)}/migrate.env")
            role_sql = f"{commands.stack_dir(ctx, rid)}/{commands.APP_ROLE_FILE}"
            self.put_text(db_commands.app_role_script(s.app_db_user, s.postgres_user,
                                                      s.postgres_password.reveal(), s.postgres_db),
                          role_sql)
            # Protected; the role's file also where a restore on this node finds it (commands/db.py).
            self.run(f"chmod 600 {commands.q(commands.stack_dir(ctx, rid))}/* && "
                     + sh(["install", "-m", "600", role_sql, db_commands.app_role_path(ctx)]),
                     "protect stack files")
            self.run(release_commands.write_meta(ctx, rid, release.recorded("deploying")), "record release")
        with steps.step("upload files (rsync)"):
            result = remote.rsync(self.conn, sources=list(SENT_PATHS), remote_path=f"{ctx.release_dir(rid)}/", cwd=str(PROJECT_ROOT),
                                  relative=True, excludes=RSYNC_EXCLUDES, link_dest=f"../{current}" if current else None, delete=False)
            if not result.ok:
                raise StepFailed("upload files", f"rsync exit {result.exited}: {result.stderr.strip()[-800:]}")
        nodes = self.state()["nodes"]
        with steps.step("images on every node"):
            built = image_commands.built_images(PROJECT_ROOT, release.image, release.postgres_image)
            self.ship_to_nodes(nodes, [*image_commands.stack_images(PROJECT_ROOT), *(i for i, _ in built)], built)
        with steps.step("start postgres and nats"):
            before = self.state()["services"]
            self.run(sh(commands.stack_deploy(stack, [data_file], bool(self.settings.registry))), "deploy data services")
            print(f"   ready in {self.wait_converged(sorted(DATA_SERVICES), 'start postgres and nats', before):.1f}s")
        if release.postgres_image:
            with steps.step("WAL archive (point-in-time recovery)"):
                self.ensure_archive(nodes)
        self.migrate_database(release, current, nodes)
        with steps.step(APP_ROLE_STEP):
            postgres_image = rendered["services"]["postgres"]["image"]
            self.run(commands.ensure_app_role(ctx, rid, stack, postgres_image), APP_ROLE_STEP)
        if not current:
            self.run(rollout.switch_current(ctx, rid), "switch current")  # nginx's config lives in the release


def summary_lines(state: dict, stack: str) -> list[str]:
    """`cluster.status`'s lines: the nodes with their tasks, the stack's services, the verdict."""
    lines = [f"Swarm: {len(state['nodes'])} node(s)"]
    per_node = commands.tasks_per_node(state["tasks"])
    for n in state["nodes"]:
        labels = ",".join(f"{k.split('.', 1)[-1]}" for k, v in sorted(n["labels"].items()) if v == "true")
        lines.append(f"  {n['alias'] or n['hostname']:14} {n['role']:8} {n['availability']:7} {n['state']:6} {n['address']:15} "
                     f"{labels or '-':11} {' '.join(per_node.get(n['hostname'], [])) or '(no tasks)'}")
    lines.append(f"Stack {stack}: {len(state['services'])} service(s)")
    for name, s in sorted(state["services"].items()):
        lines.append(f"  {name:32} {s['replicas']:8} {s['update'] or '-':20} {s['image']}")
    verdict, reasons = commands.convergence(state["services"], before=state["services"])  # a past rollback is history
    lines.append(f"state: {verdict}" + (f" ({'; '.join(reasons)})" if reasons else ""))
    return lines
