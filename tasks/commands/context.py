"""The one value every host command builder receives: where the app lives on the host, which
Compose project it is, and which Compose runs it. It owns the host's layout:

    APP_DIR/releases/<id>/          one release: compose files, nginx, backend, frontend/dist,
                                    release.yml, RELEASE.json, and .env -> ../../env/<id>.env
    APP_DIR/env/<id>.env            that release's settings (0600; the directory is 0700)
    APP_DIR/env/app-role.sql        the app's database role and grants (0600; commands/db.py)
    APP_DIR/current -> releases/<id>
    APP_DIR/shared/                 state that outlives releases: nginx/conf.d (TLS server),
                                    acme (HTTP-01 webroot), letsencrypt (certbot's state)
    APP_DIR/backups/<set>/          verified backup sets (and backup.log)
    APP_DIR/bin/                    host-side programs (the backup script, the alert program)
    APP_DIR/.deploy.lock/           the host lock (inbox/: files a deploy sends, 0700)
    APP_DIR/audit.log               one JSON line per operation

Nothing here opens a connection.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from . import q

COMPOSE_TOOLS = {
    "v2": ["docker", "compose"],
    # v1 applies deploy.resources (the plan's limits) only in compatibility mode.
    "v1": ["docker-compose", "--compatibility"],
}
STACK_FILES = ("compose.yml", "docker-compose.production.yml", "release.yml")
MANAGED_CLIENT = "db-client"  # commands/managed.py CLIENT


def stack_files(managed_db: bool = False) -> tuple[str, ...]:
    """The release's compose files; with a managed database its compose.managed.yml stands for
    compose.yml (commands/managed.py)."""
    return ("compose.managed.yml", *STACK_FILES[1:]) if managed_db else STACK_FILES


@dataclass(frozen=True)
class HostContext:
    app_dir: str
    project: str
    variant: str = "v2"  # "v2" (docker compose plugin) or "v1" (docker-compose)
    # "compose" (one host) or "swarm" (a stack on a Docker Swarm: tasks/swarm.py)
    engine: str = "compose"
    # a managed PostgreSQL (DATABASE_HOST; commands/managed.py): no postgres service, and its
    # client container stands where a step reaches "the postgres container"
    managed_db: bool = False

    def with_variant(self, variant: str) -> "HostContext":
        return replace(self, variant=variant)

    def with_engine(self, engine: str) -> "HostContext":
        return replace(self, engine=engine)

    # --- paths -----------------------------------------------------------------------
    @property
    def releases_dir(self) -> str:
        return f"{self.app_dir}/releases"

    def release_dir(self, release_id: str) -> str:
        return f"{self.releases_dir}/{release_id}"

    @property
    def env_dir(self) -> str:
        """Each release's settings (mode 0600 files in a 0700 directory that nginx never sees)."""
        return f"{self.app_dir}/env"

    def release_env(self, release_id: str) -> str:
        return f"{self.env_dir}/{release_id}.env"

    def release_meta(self, release_id: str) -> str:
        return f"{self.release_dir(release_id)}/RELEASE.json"

    @property
    def current_link(self) -> str:
        return f"{self.app_dir}/current"

    @property
    def recovering_file(self) -> str:
        """While it exists a `recover` has not finished: nginx answers 503 "recovering"
        (nginx/maintenance.conf); it holds the off-site set being brought back."""
        return f"{self.app_dir}/.recovering"

    @property
    def shared_dir(self) -> str:
        return f"{self.app_dir}/shared"

    @property
    def conf_d(self) -> str:
        return f"{self.shared_dir}/nginx/conf.d"

    @property
    def acme_webroot(self) -> str:
        return f"{self.shared_dir}/acme"

    @property
    def letsencrypt_dir(self) -> str:
        return f"{self.shared_dir}/letsencrypt"

    @property
    def mounted_dirs(self) -> list[str]:
        """Directories nginx's mounts name (docker-compose.production.yml): they must exist,
        owned by the deploy user, before Docker would create them as root (or fail to, inside
        the read-only app mount)."""
        le = self.letsencrypt_dir
        return [self.conf_d, self.acme_webroot, f"{le}/live", f"{le}/archive", self.backups_dir,
                self.bin_dir]

    @property
    def backups_dir(self) -> str:
        return f"{self.app_dir}/backups"

    @property
    def bin_dir(self) -> str:
        return f"{self.app_dir}/bin"

    @property
    def lock_dir(self) -> str:
        return f"{self.app_dir}/.deploy.lock"

    @property
    def inbox(self) -> str:
        """A 0700 directory inside the lock (made with it, removed with it): files a deploy sends
        over SFTP (its settings among them) wait here, unreadable by anyone else, until unpacked."""
        return f"{self.lock_dir}/inbox"

    @property
    def audit_log(self) -> str:
        return f"{self.app_dir}/audit.log"

    # --- compose and containers ------------------------------------------------------
    @property
    def postgres_volume(self) -> str:
        """The Docker volume holding Postgres's data directory (compose.yml's `postgres_data`, which
        Compose names `<project>_postgres_data`)."""
        return f"{self.project}_postgres_data"

    @property
    def stack_files(self) -> tuple[str, ...]:
        return stack_files(self.managed_db)

    def service(self, name: str) -> str:
        """The stack's service standing for `name`: with a managed database, `postgres` is the
        client container the toolkit reaches it through (commands/managed.py)."""
        return MANAGED_CLIENT if self.managed_db and name == "postgres" else name

    def services(self, names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(self.service(n) for n in names)

    def compose(self, *args: str) -> list[str]:
        """`docker compose -p PROJECT -f ... ARGS` for this host's Compose."""
        argv = [*COMPOSE_TOOLS[self.variant], "-p", self.project]
        for name in self.stack_files:
            argv += ["-f", name]
        return [*argv, *args]

    def service_name(self, service: str) -> str:
        """The Swarm service of a stack service (`<project>_<service>`)."""
        return f"{self.project}_{service}"

    def containers(self, service: str, *, running_only: bool = True) -> str:
        """Shell: the ids of the service's long-running containers on this host (never one-off `run`
        ones): Compose's labels, or on a swarm the stack's tasks here."""
        service = self.service(service)
        if self.engine == "swarm":
            return (f"docker ps -q{'' if running_only else ' -a'} --filter "
                    f"label=com.docker.stack.namespace={q(self.project)} "
                    f"--filter label=com.docker.swarm.service.name={q(self.service_name(service))}")
        return (f"docker ps -q{'' if running_only else ' -a'} --filter "
                f"label=com.docker.compose.project={q(self.project)} "
                f"--filter label=com.docker.compose.service={q(service)} --filter "
                "label=com.docker.compose.oneoff=False")

    def container(self, service: str) -> str:
        """Shell: one running container of the service (empty when none)."""
        return f"{self.containers(service)} | head -n 1"
