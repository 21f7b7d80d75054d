"""The stack on a Docker Swarm (ENGINE=swarm, or a swarm manager with ENGINE=auto): the host layer's
operations where a swarm differs from one Compose host. `open_host` gives the tasks a `SwarmHost`
when the host runs the stack on a swarm, and a `Host` otherwise, so `deploy`, `rollback`, `status`
and `cluster.deploy` take one code path per engine, not one per task:

    ensure_image   the release's images on every node (`docker save | docker load` over SSH;
                   the nodes: tasks/swarm_nodes.py)
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

import time
from pathlib import Path

import yaml
from invoke import Exit

from . import guards
from .commands import cluster as commands
from .commands import compose as compose_commands
from .commands import db as db_commands
from .commands import fingerprint as fingerprints
from .commands import images as image_commands
from .commands import release as release_commands
from .commands import schema as schema_commands
from .commands import rollout, sh, swarm_stack, swarm_tls
from .commands import tls as tls_commands
from .exits import ExitCode
from .host import Host, Release
from .preflight import absolute_app_dir
from .release_env import env_values
from .settings import PROJECT_ROOT
from .steps import StepFailed
from .swarm_nodes import SwarmNodes
from .swarm_plan import SwarmPlanning

STACK_SOURCES = ("compose.yml", "docker-compose.production.yml", "swarm.yml")
DATA_SERVICES = {"postgres", "nats"}
CONVERGE_SECONDS = 300


def manager_status(conn, stack: str) -> dict:
    return commands.parse_status(conn.run(commands.status(stack), hide=True, warn=True).stdout)


def load_sources(root: Path) -> list[dict]:
    return [yaml.safe_load((root / name).read_text()) or {} for name in STACK_SOURCES]


class SwarmHost(SwarmPlanning, SwarmNodes, Host):
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

    def preflight_checks(self, env: str | None, *, table: bool = False) -> None:
        """A manager only; the data's PostgreSQL major (the memory budget is per node: Swarm
        places the tasks by their reservations)."""
        self.require_manager()
        guards.check_postgres_major(self, env)

    def require_one_host(self, action: str) -> None:
        raise Exit(f"{self.name} is in a Docker Swarm: `{action}` works on one Compose host. "
                   "Recover "
                   f"onto a fresh VPS (not yet in a swarm), then `cluster.init` with it first "
                   f"(docs/several-hosts.md, \"From one VPS to a cluster\"). Nothing was changed.",
                   code=ExitCode.HOST_NOT_READY)

    def require_compose_services(self, action: str) -> None:
        raise Exit(f"{self.name} is in a Docker Swarm, where `cluster.deploy` updates a service "
                   f"whose definition changed (docs/several-hosts.md); `{action}` works on one "
                   "Compose host. Nothing was changed.", code=ExitCode.USAGE)

    def require_pitr(self) -> None:
        """The restore-to-a-time scripts stop the Postgres container, which Swarm would start again
        at once on the same volume: refused on a swarm, before anything changes."""
        raise StepFailed("restore to a time", "restoring to a moment is not available on a swarm "
                                              "yet "
                                              "(Swarm would restart the stopped Postgres on the "
                                              "volume "
                                              "being restored). Restore a backup set instead "
                                              "(`backup.restore --name SET`). Nothing was changed")

    def restore_backup(self, set_name: str, *, fresh_database: bool = False,
                       migrate: bool = False) -> None:
        """A restore scales api and worker down and up (`docker service scale`): a manager only."""
        if self.engine_problem:
            raise StepFailed("restore", "on a swarm a restore scales the api and worker services "
                                        "down and "
                                        f"up again, which only a manager can; {self.name} is a "
                                        "worker. Make "
                                        "the data node a manager (`docker node promote NODE` on "
                                        "the "
                                        f"manager) and run the restore there. Nothing was changed")
        super().restore_backup(set_name, fresh_database=fresh_database, migrate=migrate)

    def cluster_state(self) -> dict | None:
        return None if self.engine_problem else self.state()

    def nginx_check_command(self) -> str:
        return tls_commands.nginx_test_running(self.ctx, self.current_id)

    def state(self) -> dict:
        """Nodes, the stack's services (replicas, update state) and tasks, as the manager sees
        them."""
        return manager_status(self.conn, self.stack)

    # --- rolling out ------------------------------------------------------------------------
    def wait_converged(self, services: list[str] | None, what: str,
                       before: dict | None = None) -> float:
        started = time.monotonic()
        reasons: list[str] = []
        wanted = [self.ctx.service_name(s) for s in services] if services else None
        while time.monotonic() - started < self.converge_seconds:
            verdict, reasons = commands.convergence(self.state()["services"], wanted, before)
            if verdict == "done":
                return time.monotonic() - started
            if verdict == "failed":
                failed = " ".join(reason.split(":")[0] for reason in reasons)
                raise StepFailed(what, "Swarm rolled the update back by itself "
                                       f"({'; '.join(reasons)}): the new tasks "
                                       "did not pass their health checks, and the previous ones "
                                       "kept serving; `docker "
                                       f"service ps {failed} --no-trunc` on {self.name} says why.")
            time.sleep(2)
        raise StepFailed(what, f"not converged after {self.converge_seconds:.0f}s: "
                               f"{'; '.join(reasons)}")

    def services_once_rolled_back(self) -> dict:
        """The stack's services, once no rollback Swarm began by itself is still under way (the
        previous release put back right after a failed update): a stack deploy meanwhile is refused
        ("update out of sequence"), and that rollback's end would read as this one's failure."""
        started = time.monotonic()
        while True:
            services = self.state()["services"]
            if time.monotonic() - started > self.converge_seconds or not any(
                    s["update"] == "rollback_started" for s in services.values()):
                return services
            time.sleep(1)

    def activate(self, release: Release, *, backend: bool = True, then: str = "") -> None:
        """`docker stack deploy` of the release's stack file (start-first, health-checked, rolled
        back by Swarm on failure), awaited; then `current`, nginx and the probe as on one host.
        `backend` is ignored: Swarm changes only the services whose spec changed."""
        self.require_manager()
        before = self.services_once_rolled_back()
        if not self.current_id:  # the first release: nginx mounts its config from `current`
            self.run(rollout.switch_current(self.ctx, release.id), "switch current")
        with self.steps.step("rolling update (docker stack deploy)"):
            out = self.stack_deploy(release)
            for line in out.stdout.splitlines():
                print(f"   {line}")
            print(f"   converged in {self.wait_converged(None, 'rolling update', before):.1f}s",
                  flush=True)
        with self.steps.step("switch current and reload nginx"):
            self.run(rollout.switch_current(self.ctx, release.id) + " && "
                     + commands.nginx_reload(self.stack), "switch current")
        with self.steps.step("health checks"):
            self.probe(release)
        if then:
            self.run(then, "record release")

    def stack_deploy(self, release: Release):
        """The rolling update's `docker stack deploy`, once more when Swarm changed a service
        between its read and its write ("update out of sequence": an update of its own ending)."""
        try:
            return self.run(self.rolling_update_command(release), "rolling update")
        except StepFailed as failure:
            if "update out of sequence" not in failure.detail:
                raise
            time.sleep(2)
            return self.run(self.rolling_update_command(release), "rolling update")

    def rolling_update_command(self, release: Release) -> str:
        """`docker stack deploy` of the release's stack file, refused when it has none."""
        stack_file = commands.stack_file(self.ctx, release.id)
        return (f"test -f {commands.q(stack_file)} || {{ echo 'release {release.id} has no stack "
                f"file: it was not deployed to a swarm' >&2; exit 1; }}; "
                + sh(commands.stack_deploy(self.stack, [stack_file], bool(self.settings.registry))))

    # --- the swarm engine's part of the release pipeline (tasks/pipeline.py) -------------------
    sent_paths = fingerprints.SWARM_SENT_PATHS
    images_step = "images on every node"
    mesh: bool | None = None  # publish through the routing mesh (None: when the swarm has IPVS)
    postgres_image: str = ""  # the stack's Postgres image, as rendered by `prepare`
    tls: dict[str, str] | None = None  # the TLS certificates' fingerprints (commands/swarm_tls.py)
    rotate_tls: bool = False  # issue the servers' certificates anew (`cluster.deploy --rotate-tls`)
    encrypted: bool = False  # the overlay with IPsec (SWARM_OVERLAY_ENCRYPTION, the kernel's ESP)

    @property
    def tls_dir(self) -> str:
        return swarm_tls.tls_dir(absolute_app_dir(self.facts, self.ctx.app_dir))

    def tls_certificates(self, mode: str) -> dict[str, str]:
        """The CA's and the servers' certificate fingerprints on the manager: `check` reads them
        (changing nothing), `ensure` first issues what is missing or near expiry, `rotate` issues
        the servers' anew."""
        command = swarm_tls.ca_command(self.tls_dir, mode)
        out = (self.probe_run(command) if mode == "check"
               else self.run(command, "TLS certificates"))
        self.tls = swarm_tls.parse_fingerprints(out.stdout)
        return self.tls

    def release_images(self) -> tuple[str, str]:
        """The built images, named in REGISTRY when the nodes pull them from there."""
        registry, stack = self.settings.registry, self.stack
        image = image_commands.in_registry(image_commands.backend_image(PROJECT_ROOT, stack),
                                           registry)
        postgres = image_commands.postgres_image(PROJECT_ROOT, stack)
        return image, image_commands.in_registry(postgres, registry) if postgres else ""

    def fingerprint(self, plan) -> tuple[str, dict]:
        """The stack rendered without the release id, and every file sent. Refuses (changing
        nothing) a manager where the single-host Compose stack still runs, or a stack file that
        lacks a setting."""
        self.require_manager()
        compose_left = self.probe_run(f"{self.ctx.with_engine('compose').containers('api')} "
                                      f"| head -n 1").stdout.strip()
        if compose_left:
            raise Exit(f"The single-host Compose stack {self.stack} still runs on {self.name}: "
                       "stop it "
                       f"first with `fab -H {self.name} compose.down` (its volumes stay, and the "
                       "swarm's Postgres uses the same one: docs/several-hosts.md, \"From one VPS "
                       f"to a cluster\"). Nothing was changed.", code=ExitCode.REFUSED)
        self.read_kernel()
        self.tls_certificates("check")  # a certificate to renew changes the stack: a deploy
        if self.rotate_tls:
            self.tls = {**self.tls, **dict.fromkeys(swarm_tls.SERVERS, "rotate")}
        return self.stack_fingerprint(plan), {"engine": "swarm"}

    def read_kernel(self) -> None:
        """The routing mesh when the manager's kernel has IPVS (unless set), the encrypted overlay
        (SWARM_OVERLAY_ENCRYPTION) when it has ESP; `yes` on a kernel without ESP is refused."""
        kernel = commands.parse_facts(self.probe_run(commands.facts()).stdout)
        self.mesh = kernel["ipvs"] if self.mesh is None else self.mesh
        wanted = self.settings.swarm_overlay_encryption
        if wanted == "yes" and not kernel["esp"]:
            raise Exit(f"SWARM_OVERLAY_ENCRYPTION=yes, but {self.name}'s kernel has no ESP "
                       "(IPsec), so an encrypted overlay would carry nothing. Set it to auto or "
                       "no (Postgres and NATS use TLS either way). Nothing was changed.",
                       code=ExitCode.USAGE)
        self.encrypted = kernel["esp"] and wanted != "no"

    def stack_fingerprint(self, plan) -> str:
        same = swarm_stack.dump_stack(self.render(plan, ""))
        return fingerprints.stack_fingerprint(PROJECT_ROOT, same)

    def render(self, plan, release_id: str) -> dict:
        """The stack for `docker stack deploy`: the three files, `${VAR}` filled in."""
        values = {**env_values(self.settings, plan.env_file, absolute_app_dir(self.facts,
                                                                              self.ctx.app_dir)),
                  "BACKEND_IMAGE": plan.image, "RELEASE_ID": release_id,
                  **({"POSTGRES_IMAGE": p} if (p := self.release_images()[1]) else {})}
        try:
            rendered = swarm_stack.render_stack(load_sources(PROJECT_ROOT), values, mesh=self.mesh)
        except ValueError as err:
            raise Exit(f"The stack files need a setting: {err}. Nothing was changed.",
                       code=ExitCode.USAGE) from None
        tls = self.tls or swarm_tls.parse_fingerprints("")
        rendered = swarm_tls.with_tls(rendered, self.stack, self.tls_dir, tls)
        return swarm_tls.with_encrypted_overlay(rendered) if self.encrypted else rendered

    def serving_on(self) -> str:
        return f"the swarm ({len(self.state()['nodes'])} nodes)"

    def describe(self, plan) -> str:
        return (f"{plan.release.id} -> stack {self.stack} via {self.name} "
                f"({'routing mesh' if self.mesh else 'dnsrr + host-mode ports: no IPVS'})")

    def prepare(self, plan) -> tuple[set[str], list[tuple[str, dict]]]:
        """The release's directory, its stack files (0600: they hold the settings) and RELEASE.json;
        (nothing: images are looked up per node, the kept releases)."""
        ctx, release = self.ctx, plan.release
        rid = release.id
        if not swarm_tls.ready(self.tls_certificates("rotate" if self.rotate_tls else "ensure")):
            raise StepFailed("TLS certificates", f"the CA in {self.tls_dir} on {self.name} did not "
                                                 f"issue them ({self.tls}). Nothing was deployed")
        release.meta["fingerprint"] = self.stack_fingerprint(plan)  # with the certificates' names
        rendered = self.render(plan, rid)
        self.run(release_commands.prepare(ctx, rid, compose_commands.release_override(release.image,
                                                                                      rid))
                 + " && " + sh(commands.prepare_stack_dir(ctx, rid)), "prepare release")
        self.put_text(swarm_stack.dump_stack(rendered), commands.stack_file(ctx, rid))
        self.put_text(swarm_stack.dump_stack(swarm_stack.only_services(rendered, DATA_SERVICES)),
                      commands.stack_file(ctx, rid, "data"))
        self.put_text(swarm_stack.docker_env_file(swarm_stack.migration_environment(rendered)),
                      f"{commands.stack_dir(ctx, rid)}/migrate.env")
        s = self.settings
        role_sql = f"{commands.stack_dir(ctx, rid)}/{commands.APP_ROLE_FILE}"
        self.put_text(db_commands.app_role_script(s.app_db_user, s.postgres_user,
                                                  s.postgres_password.reveal(), s.postgres_db),
                      role_sql)
        # Protected; the role's file also where a restore on this node finds it (commands/db.py).
        self.run(f"chmod 600 {commands.q(commands.stack_dir(ctx, rid))}/* && "
                 + sh(["install", "-m", "600", role_sql, db_commands.app_role_path(ctx)]),
                 "protect stack files")
        self.postgres_image = rendered["services"]["postgres"]["image"]
        self.run(release_commands.write_meta(ctx, rid, release.recorded("deploying")),
                 "record release")
        return set(), self.releases()[0]

    def provide_images(self, plan, on_host: set[str]) -> None:
        release = plan.release
        built = image_commands.built_images(PROJECT_ROOT, release.image, release.postgres_image)
        self.ship_to_nodes(self.state()["nodes"],
                           [*image_commands.stack_images(PROJECT_ROOT), *(i for i, _ in built)],
                           built)

    def start_data(self, plan) -> tuple[schema_commands.SchemaState, Host]:
        """Postgres and NATS deployed first and awaited; the schema read where the data is."""
        data_file = commands.stack_file(self.ctx, plan.release.id, "data")
        with self.steps.step("start postgres and nats"):
            before = self.state()["services"]
            self.run(sh(commands.stack_deploy(self.stack, [data_file],
                                              bool(self.settings.registry))),
                     "deploy data services")
            took = self.wait_converged(sorted(DATA_SERVICES), "start postgres and nats", before)
            print(f"   ready in {took:.1f}s")
        data = self.data_host()
        return data.schema(plan.release.id), data

    def migrate_command(self, release: Release) -> str:
        """Once, in a one-off container of the new image on the stack's attachable network."""
        return sh(commands.migrate(self.ctx, release.id, self.stack, release.image,
                                   tuple(swarm_tls.one_off_args(self.tls_dir))))

    def app_role_command(self, release: Release) -> str:
        """The role's SQL run in a one-off container of the stack's Postgres image."""
        image = self.postgres_image or release.postgres_image
        return commands.ensure_app_role(self.ctx, release.id, self.stack, image,
                                        tuple(swarm_tls.one_off_args(self.tls_dir)))

    def check_running(self) -> list[str]:
        """What keeps the stack from running all its replicas (a past rollback is history)."""
        services = self.state()["services"]
        verdict, reasons = commands.convergence(services, before=services)
        return [] if verdict == "done" else reasons or [f"the stack is {verdict}"]


def summary_lines(state: dict, stack: str) -> list[str]:
    """`cluster.status`'s lines: the nodes with their tasks, the stack's services, the verdict."""
    lines = [f"Swarm: {len(state['nodes'])} node(s)"]
    per_node = commands.tasks_per_node(state["tasks"])
    for n in state["nodes"]:
        labels = ",".join(f"{k.split('.', 1)[-1]}" for k, v in sorted(n["labels"].items())
                          if v == "true")
        lines.append(f"  {n['alias'] or n['hostname']:14} {n['role']:8} {n['availability']:7} "
                     f"{n['state']:6} {n['address']:15} {labels or '-':11} "
                     f"{' '.join(per_node.get(n['hostname'], [])) or '(no tasks)'}")
    lines.append(f"Stack {stack}: {len(state['services'])} service(s)")
    for name, s in sorted(state["services"].items()):
        lines.append(f"  {name:32} {s['replicas']:8} {s['update'] or '-':20} {s['image']}")
    # a past rollback is history
    verdict, reasons = commands.convergence(state["services"], before=state["services"])
    lines.append(f"state: {verdict}" + (f" ({'; '.join(reasons)})" if reasons else ""))
    return lines
