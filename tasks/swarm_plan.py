"""`deploy --dry-run` on a swarm, mixed into `SwarmHost` (tasks/swarm.py): the stack's services,
what each node lacks, the migrations, and every command the deploy would run, built by the same
builders it runs (tests/test_swarm_engine.py compares the two)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import planning, remote
from .commands import backup as backup_commands
from .commands import cluster as commands
from .commands import compose as compose_commands
from .commands import db as db_commands
from .commands import pitr as pitr_commands
from .commands import release as release_commands
from .commands import rollout, sh, swarm_tls
from .commands.release import releases_to_prune
from .commands.rollout import APP_ROLE_STEP, ARCHIVE_STEP, RECORD_STEP
from .planning import Planned
from .steps import StepFailed

if TYPE_CHECKING:
    from .host import Host


class SwarmPlanning:
    """Mixed into `SwarmHost`, whose stack, nodes, data host and builders it uses."""

    def dry_run_plan(self, plan) -> list[Planned]:
        """`deploy --dry-run` on a swarm, once a release is planned: the stack's services, what each
        node lacks, the migrations and the commands that would change the swarm, in order."""
        ctx, release, current = self.ctx, plan.release, plan.current
        rid = release.id
        print("services:")
        for name, service in sorted(self.render(plan, rid)["services"].items()):
            deploy = service.get("deploy") or {}
            where = ", ".join((deploy.get("placement") or {}).get("constraints")
                              or []) or "any node"
            order = (deploy.get("update_config") or {}).get("order", "stop-first")
            print(f"   {name:9} {service.get('image', '?'):44} replicas "
                  f"{deploy.get('replicas', 1)}  on {where}  update {order}")
        print("images:")
        shipping = self.dry_run_images(release)
        print("migrations:")
        migration_lines, backup, migrate = planning.dry_run_migrations(self, current)
        for line in migration_lines:
            print(f"   {line}")
        planned = self.planned_commands(plan, shipping, backup, migrate)
        planning.print_planned(self, planned, "Commands that would change the swarm, in order "
                               "(each stack deploy is awaited until it converges: start-first, "
                               "and Swarm rolls back a failure; the health probe runs before the "
                               f"record; the deploy also takes {self.name}'s lock and appends one "
                               f"line to {ctx.audit_log}; when the rolling update fails it puts "
                               f"{current or 'nothing'} back):")
        return planned

    def planned_data_host(self) -> tuple[Host, str]:
        """Where the data's commands would run, and its name in the plan: this manager, or the data
        node; before the data services first run, this manager's paths for "the data node"."""
        try:
            data = self.data_host()
        except StepFailed:
            return self, "data node"
        return data, (self.name if data is self else data.name)

    def planned_commands(self, plan, shipping: list[tuple[str, list[str]]], backup: bool,
                         migrate: bool) -> list[Planned]:
        """Every command the deploy of `plan.release` runs that changes the swarm, in order, when
        every check passes: the same builders `prepare`, `start_data`, `ensure_archive`, the
        backup, `activate` and the record run (tests/test_swarm_engine.py compares the two)."""
        ctx, stack, release = self.ctx, self.stack, plan.release
        rid, registry, here = release.id, bool(self.settings.registry), self.name
        stack_dir = commands.stack_dir(ctx, rid)
        data, on_data = self.planned_data_host()
        prepare, backup_step = ("prepare release and its settings",
                                "back up database before migrating")
        prune = releases_to_prune(self.releases()[0] + [(rid, release.recorded("ok"))], rid,
                                  self.settings.keep_releases)
        planned = [
            Planned(prepare, here, swarm_tls.ca_command(self.tls_dir, "ensure")),
            Planned(prepare, here, release_commands.prepare(
                ctx, rid, compose_commands.release_override(release.image, rid))
                + " && " + sh(commands.prepare_stack_dir(ctx, rid))),
            *(Planned(prepare, "sftp", f"{path} <- {what} (values not shown)") for path, what in (
                (commands.stack_file(ctx, rid), "the stack"),
                (commands.stack_file(ctx, rid, "data"), "its data services"),
                (f"{stack_dir}/migrate.env", "the migration's settings"),
                (f"{stack_dir}/{commands.APP_ROLE_FILE}", "the app's database role"))),
            Planned(prepare, here, f"chmod 600 {commands.q(stack_dir)}/* && " + sh(
                ["install", "-m", "600", f"{stack_dir}/{commands.APP_ROLE_FILE}",
                 db_commands.app_role_path(ctx)])),
            Planned(prepare, here, release_commands.write_meta(ctx, rid,
                                                               release.recorded("deploying"))),
            Planned("upload files (rsync)", "here",
                    remote.rsync_command(self.conn, **self.upload_options(rid, plan.current))),
            *(Planned(self.images_step, name, f"docker load < (docker save {' '.join(missing)} "
                                              "from here, over SSH)") for name,
              missing in shipping),
            Planned("start postgres and nats", here, sh(commands.stack_deploy(
                stack, [commands.stack_file(ctx, rid, "data")], registry))),
            *([Planned(ARCHIVE_STEP, on_data, pitr_commands.ensure_stanza(
                data.ctx, data.ctx.container("postgres")))] if release.postgres_image else []),
            *([Planned(backup_step, on_data, backup_commands.install_script(data.ctx)),
               Planned(backup_step, "sftp", f"{backup_commands.script_path(data.ctx)}.new <- "
                                            "the backup program"),
               Planned(backup_step, on_data, sh(backup_commands.activate_script(data.ctx))),
               Planned(backup_step, on_data, sh(backup_commands.run(
                   data.ctx, self.settings.backup_keep, True)))] if backup else []),
            *([Planned("migrate database", here, self.migrate_command(release))] if migrate
              else []),
            Planned(APP_ROLE_STEP, here, commands.ensure_app_role(
                ctx, rid, stack, self.render(plan, rid)["services"]["postgres"]["image"],
                tuple(swarm_tls.one_off_args(self.tls_dir)))),
            *([] if plan.current else [Planned("switch current", here,
                                               rollout.switch_current(ctx, rid))]),
            Planned("rolling update (docker stack deploy)", here,
                    self.rolling_update_command(release)),
            Planned("switch current and reload nginx", here,
                    rollout.switch_current(ctx, rid) + " && " + commands.nginx_reload(stack)),
            Planned(RECORD_STEP, here, self.record_command(release, prune))]
        return planned
