"""Capacity benchmark on a throwaway sandbox VPS (run as root): prints figures, asserts nothing.

    flock /tmp/tasktracker-e2e.lock uv run python benchmarks/capacity.py [--seconds 15] [--levels 10,50,100,200]
                                                                         [--set API_WORKERS=2]...
                                                                         [--tracing]

Deploys the stack as a VPS gets it (compose.yml + docker-compose.production.yml, the plan's
resource limits), then loads it through nginx with wrk (Debian's `wrk`, installed when missing):
the dashboard (`/` + its hashed JS bundle, gzip accepted like a browser), `GET /api/tasks`
(100 rows) and `POST /api/tasks`, each at rising concurrency with every connection always busy
(closed loop: the worst case), then the plan's own load: 100 and 200 open connections paced to
50 and 100 req/s of the API (80% GET, 20% POST). Prints req/s, p50/p95/p99, errors (non-2xx
and socket errors), the CPU used by wrk, by each service and by the machine, and each
service's memory at rest and at peak (as `docker stats` counts it: without inactive page
cache) beside the plan's figures. The plan (docs/vps-deployment-strategy.md): 50-100 req/s
with one API worker, p95 < 500 ms, 100-200 concurrent connections, ~1.8 GB at rest, ~2.5 GB peak.

wrk talks to nginx's container address (as a VPS's clients arrive through Docker's iptables
DNAT), not to the published loopback port, which Docker serves through its userland proxy: a
process a VPS's real clients never pass through, that would take CPU from the stack here.
Everything it made is removed at the end: the stack's containers, volumes, networks and backend
image (by its own Compose project), then the sandbox's user, sshd and files (`sandbox.down`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import (  # noqa: E402
    OtlpReceiver, container_address, docker_gateway, throwaway_sandbox,
)

# The plan's figures (docs/vps-deployment-strategy.md, "Production" and "Expected Performance").
PLAN_MEMORY_MB = {"postgres": 300, "nats": 50, "worker": 600, "api": 800, "nginx": 20}
PLAN_REST_MB, PLAN_PEAK_MB = 1800, 2500
SERVICES = ["nginx", "api", "postgres", "nats", "worker"]
# wrk's error counters: HTTP status >= 400, and socket errors (a timeout is no answer within 10 s)
ERROR_KINDS = [("status", "HTTP >= 400"), ("connect", "connect"), ("read", "read"), ("write", "write"), ("timeout", "timeout")]

# wrk's Lua side: the request mix, optional pacing, and one JSON line of results at the end.
LUA_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('CAPACITY {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50": %d, "p95": %d, "p99": %d, "max": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
"""
LUA_MIX = r"""
local gets = {%(gets)s}
local post_every = %(post_every)d
local pace_ms = %(pace_ms)d
local n = 0
-- a task about the size of a Telegram message (~400 characters), so that the 100 rows GET returns weigh what real ones do
local body = '{"title": "capacity benchmark task", "body": "' .. string.rep("written by benchmarks/capacity.py to load the API. ", 8) .. '"}'
init = function(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
  n = math.random(0, 1000)
end
request = function()
  n = n + 1
  if post_every > 0 and n %% post_every == 0 then
    return wrk.format("POST", "/api/tasks", {["Content-Type"] = "application/json"}, body)
  end
  return wrk.format("GET", gets[(n %% #gets) + 1], {["Accept-Encoding"] = "gzip, deflate, br"})
end
if pace_ms > 0 then
  -- each connection waits a random time (mean pace_ms) before its next request
  delay = function() return math.random(0, 2 * pace_ms) end
end
"""


@dataclass
class Mix:
    name: str
    gets: list[str]
    post_every: int = 0  # every n-th request is a POST (1: all of them)

    def lua(self, pace_ms: int = 0) -> str:
        gets = ", ".join(json.dumps(p) for p in self.gets or ["/api/tasks"])
        return LUA_MIX % {"gets": gets, "post_every": self.post_every, "pace_ms": pace_ms} + LUA_DONE


@dataclass
class Container:
    service: str
    id: str
    mem_files: tuple[Path, Path]  # usage, stat
    cpu_file: Path
    cpu_v2: bool

    def memory(self) -> int:
        """Bytes in use as `docker stats` counts them: usage minus inactive page cache."""
        usage = int(self.mem_files[0].read_text())
        stat = dict(line.split() for line in self.mem_files[1].read_text().splitlines())
        return usage - int(stat.get("total_inactive_file", stat.get("inactive_file", 0)))

    def cpu_seconds(self) -> float:
        if self.cpu_v2:
            return int(dict(line.split() for line in self.cpu_file.read_text().splitlines())["usage_usec"]) / 1e6
        return int(self.cpu_file.read_text()) / 1e9


def cgroup_container(service: str, cid: str) -> Container:
    """The cgroup files of a running container (cgroup v1 or v2), from its init process."""
    pid = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", cid], capture_output=True, text=True, check=True).stdout.strip()
    paths = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") or [""]:
            paths[c] = path
    if "memory" in paths:  # cgroup v1
        mem = Path("/sys/fs/cgroup/memory") / paths["memory"].lstrip("/")
        cpu_dir = next(d for d in (Path("/sys/fs/cgroup/cpuacct"), Path("/sys/fs/cgroup/cpu,cpuacct")) if d.exists())
        return Container(service, cid, (mem / "memory.usage_in_bytes", mem / "memory.stat"),
                         cpu_dir / paths["cpuacct"].lstrip("/") / "cpuacct.usage", False)
    base = Path("/sys/fs/cgroup") / paths[""].lstrip("/")
    return Container(service, cid, (base / "memory.current", base / "memory.stat"), base / "cpu.stat", True)


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    total = sum(fields[:8]) / tick
    return total - (fields[3] + fields[4]) / tick, total


DOCKER_DAEMONS = {"dockerd", "containerd", "containerd-shim", "docker-proxy"}  # comm is cut to 15 characters


def docker_daemons_cpu() -> float:
    """CPU seconds used so far by Docker's own processes (they carry every container's log lines)."""
    tick, used = os.sysconf("SC_CLK_TCK"), 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone
            continue
        comm, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        if comm in DOCKER_DAEMONS:
            used += int(rest[11]) + int(rest[12])  # utime, stime
    return used / tick


@dataclass
class Sampler:
    """Samples every container's memory twice a second; peak per service (all its containers)."""
    containers: list[Container]
    peaks: dict[str, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> dict[str, int]:
        now: dict[str, int] = {}
        for c in self.containers:
            try:
                now[c.service] = now.get(c.service, 0) + c.memory()
            except OSError:  # a container gone
                pass
        return now

    def _loop(self):
        while not self.stop.wait(0.5):
            for service, value in self.sample().items():
                self.peaks[service] = max(self.peaks.get(service, 0), value)

    def __enter__(self):
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)


def remove_stack(project: str) -> None:
    """This run's own stack, by its Compose project: containers, volumes, networks and the backend
    image (`sandbox.down` removes the user, sshd and files, but keeps backend images)."""
    label = f"label=com.docker.compose.project={project}"

    def ids(*argv: str) -> list[str]:
        return subprocess.run(["docker", *argv], capture_output=True, text=True).stdout.split()

    # The image by its own name (repository:tag), never by id: other stacks' tags may share the id.
    for argv, rm in ((["ps", "-aq", "--filter", label], ["rm", "-f"]), (["volume", "ls", "-q", "--filter", label], ["volume", "rm", "-f"]),
                     (["network", "ls", "-q", "--filter", label], ["network", "rm"]),
                     (["images", "--format", "{{.Repository}}:{{.Tag}}", f"{project}-backend"], ["rmi"])):
        found = sorted(set(ids(*argv)))
        if found:
            subprocess.run(["docker", *rm, *found], capture_output=True)


def ensure_wrk() -> str:
    """Debian's wrk (an efficient C load generator); installed once, a no-op when present."""
    if not shutil.which("wrk"):
        from lab.machine import apt_install

        apt_install(["wrk"])
    return shutil.which("wrk")


class Stack:
    """The deployed stack of one Compose project: its containers' cgroups, nginx's address, and
    wrk runs against it with the CPU of everything involved."""

    def __init__(self, project: str, wrk: str, workdir: Path):
        self.project, self.wrk, self.workdir = project, wrk, workdir
        self.refresh()

    def refresh(self) -> None:
        """(Re)read the running containers (a deploy replaces the API's)."""
        ids = subprocess.run(["docker", "ps", "--filter", f"label=com.docker.compose.project={self.project}",
                              "--filter", "label=com.docker.compose.oneoff=False",
                              "--format", '{{.ID}} {{.Label "com.docker.compose.service"}}'],
                             capture_output=True, text=True, check=True).stdout.splitlines()
        self.containers = [cgroup_container(service, cid) for cid, service in (line.split() for line in ids if line.strip())]
        self.by_service = {c.service: c for c in self.containers}
        self.base = f"http://{container_address(self.by_service['nginx'].id)}"

    def psql(self, sql: str) -> str:
        return subprocess.run(["docker", "exec", self.by_service["postgres"].id, "sh", "-c",
                               f'psql -U "$POSTGRES_USER" -d "$POSTGRES_DB" -Atc "{sql}"'],
                              capture_output=True, text=True).stdout.strip()

    def pending(self) -> int:
        return int(self.psql("SELECT count(*) FROM tasks WHERE status = 'pending'") or -1)

    def ours(self) -> float:
        return docker_daemons_cpu() + sum(c.cpu_seconds() for c in self.containers)

    def foreign_load(self, seconds: float = 1.0) -> float:
        """Cores busy outside the stack, its Docker daemons and this script over `seconds`."""
        busy0, ours0 = machine_cpu()[0], self.ours()
        time.sleep(seconds)
        return max(0.0, (machine_cpu()[0] - busy0) - (self.ours() - ours0)) / seconds

    def load(self, mix: Mix, connections: int, seconds: int, pace_ms: int = 0) -> dict:
        # Other people's work on this machine (builds, unit tests) would take CPU from the stack:
        # wait up to 30 s for the machine to be quiet; the `other` column shows what remained.
        deadline = time.monotonic() + 30
        while self.foreign_load() > 0.25 and time.monotonic() < deadline:
            pass
        script, out = self.workdir / "mix.lua", self.workdir / "wrk.out"
        script.write_text(mix.lua(pace_ms))
        (busy0, total0), daemons0 = machine_cpu(), docker_daemons_cpu()
        cpu0 = {c.service: c.cpu_seconds() for c in self.containers}
        with open(out, "w") as f:
            proc = subprocess.Popen([self.wrk, "-t", str(min(2, connections)), "-c", str(connections), "-d", f"{seconds}s",
                                     "--timeout", "10s", "-s", str(script), self.base + "/"], stdout=f, stderr=subprocess.STDOUT)
            time.sleep(seconds / 2)
            conns = self.psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
            _, status, usage = os.wait4(proc.pid, 0)  # wrk's own CPU time comes with it
            proc.returncode = os.waitstatus_to_exitcode(status)
        (busy1, total1), daemons1 = machine_cpu(), docker_daemons_cpu()
        text = out.read_text()
        line = next((v for v in text.splitlines() if v.startswith("CAPACITY ")), None)
        if proc.returncode != 0 or line is None:
            raise SystemExit(f"wrk failed ({proc.returncode}):\n{text}")
        r = json.loads(line.removeprefix("CAPACITY "))
        wall = r["duration_us"] / 1e6
        r.update(rps=r["requests"] / wall, errors=sum(r[k] for k, _ in ERROR_KINDS), wrk_cpu=(usage.ru_utime + usage.ru_stime) / wall,
                 machine=(busy1 - busy0) / (total1 - total0), db_conns=conns,
                 cpu={c.service: (c.cpu_seconds() - cpu0[c.service]) / wall for c in self.containers})
        # cores busy elsewhere: Docker's daemons (container logs, networking), then anything else on
        # the machine (the kernel, other people's work: the figures are only as good as this is small)
        r["docker"] = max(0.0, daemons1 - daemons0) / wall  # (a daemon that exits takes its count with it)
        r["other"] = max(0.0, (busy1 - busy0) / wall - r["docker"] - r["wrk_cpu"] - sum(r["cpu"].values()))
        return r


HEADER = (f"  {'mix':24} {'conns':>5} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'errors':>7}   "
          f"{'wrk':>4} {'nginx':>5} {'api':>5} {'pg':>5} {'worker':>6} {'docker':>6} {'other':>5} {'machine':>7}  {'db conns':>8}")


def show(name: str, conns: int, r: dict) -> None:
    cpu = r["cpu"]
    kinds = ", ".join(f"{r[k]} {label}" for k, label in ERROR_KINDS if r[k])
    print(f"  {name:24} {conns:5} {r['rps']:7.0f} {r['p50'] / 1000:7.1f} {r['p95'] / 1000:7.1f} {r['p99'] / 1000:7.1f} "
          f"{r['errors']:7}   {r['wrk_cpu']:4.2f} {cpu.get('nginx', 0):5.2f} {cpu.get('api', 0):5.2f} "
          f"{cpu.get('postgres', 0):5.2f} {cpu.get('worker', 0):6.2f} {r['docker']:6.2f} {r['other']:5.2f} "
          f"{r['machine'] * 100:6.0f}%  {r['db_conns']:>8}" + (f"  errors: {kinds}" if kinds else ""), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15, help="duration of each level")
    parser.add_argument("--levels", default="10,50,100,200", help="concurrent connections, comma separated")
    parser.add_argument("--mixes", default="dashboard,get,post", help="which closed-loop mixes to run")
    parser.add_argument("--no-paced", action="store_true", help="skip the plan's paced load")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting for the deployed stack")
    parser.add_argument("--tracing", action="store_true",
                        help="deploy with LOGFIRE_TOKEN, the traces going to a local OTLP receiver "
                             "(tests/support.py)")
    args = parser.parse_args()
    wrk = ensure_wrk()
    with throwaway_sandbox("127.0.0.8", "cap") as box, contextlib.ExitStack() as stack:
        if args.tracing:  # the stack's containers reach this machine at Docker's gateway
            receiver = stack.enter_context(OtlpReceiver(docker_gateway()))
            args.set += [f"LOGFIRE_TOKEN=pylf_v1_us_{secrets.token_hex(20)}",
                         f"LOGFIRE_BASE_URL={receiver.url}"]
        if args.set:
            with open(box.state / ".env", "a") as f:
                f.write("".join(f"{kv}\n" for kv in args.set))
        project = box.setting("COMPOSE_PROJECT")
        try:
            deploy_s, _ = box.run("fab", "-H", "sandbox", "deploy")
            measure(Stack(project, wrk, box.work), args, deploy_s)
            if args.tracing:
                print(f"  tracing: the receiver took {len(receiver.requests)} requests, "
                      f"{len(receiver.exports('traces')) / 1e6:.1f} MB of traces (unzipped)")
        finally:
            remove_stack(project)
    return 0


def measure(stack: Stack, args, deploy_s: float) -> None:
    levels = [int(v) for v in args.levels.split(",")]
    html = urllib.request.urlopen(f"{stack.base}/", timeout=10).read().decode()
    bundle = html.split('src="', 1)[1].split('"', 1)[0]  # the hashed JS bundle index.html loads
    mixes = {"dashboard": Mix("dashboard: / + bundle", ["/", bundle]),
             "get": Mix("GET /api/tasks", ["/api/tasks"]),
             "post": Mix("POST /api/tasks", [], post_every=1)}
    api_mix = Mix("API 80% GET 20% POST", ["/api/tasks"], post_every=5)

    # Warm-up: a few hundred tasks (so GET /api/tasks returns its full 100 rows), every path once hot.
    for key in ("post", "get", "dashboard"):
        stack.load(mixes[key], 4, 3)
    time.sleep(8)  # the worker finishes the warm-up's jobs; then the stack is at rest
    rest = {s: max(v, 0) for s, v in Sampler(stack.containers).sample().items()}
    pending0 = stack.pending()

    shown = [kv if not kv.startswith("LOGFIRE_TOKEN=") else "LOGFIRE_TOKEN=[REDACTED]"
             for kv in args.set]
    cpus = os.cpu_count()
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    print(f"Capacity benchmark: the sandbox stack on this machine ({cpus} CPUs, {mem_gb:.0f} GB), production override and "
          f"the plan's limits, deployed in {deploy_s:.0f}s"
          f"{'; ' + ', '.join(shown) if shown else ''}")
    print(f"  wrk ({stack.wrk}, 2 threads, keep-alive) against nginx at {stack.base}, {args.seconds}s per level; CPU columns in "
          f"cores (1.00 = one core; limits: nginx 0.3, api 1.0); docker = Docker's daemons (container logs); other = the rest "
          f"of the machine (kernel, anything else running: a large value spoils that row); machine = busy share of all {cpus} cores")
    for path in ("/", bundle, "/api/tasks"):
        sizes = []
        for encoding in ("identity", "gzip"):
            req = urllib.request.Request(stack.base + path, headers={"Accept-Encoding": encoding})
            sizes.append(len(urllib.request.urlopen(req, timeout=10).read()))
        print(f"  {path}: {sizes[0] / 1000:.1f} kB, {sizes[1] / 1000:.1f} kB gzipped")
    print(HEADER, flush=True)

    backlog = None
    with Sampler(stack.containers) as sampler:
        for key in args.mixes.split(","):
            for conns in levels:
                show(mixes[key].name, conns, stack.load(mixes[key], conns, args.seconds))
                time.sleep(2)
            if key == "post":  # the worker's backlog: jobs queued by the POSTs, and how long it takes to run them
                started, queued = time.monotonic(), stack.pending()
                while stack.pending() > 0 and time.monotonic() - started < 90:
                    time.sleep(1)
                backlog = (queued, time.monotonic() - started, stack.pending())
        if not args.no_paced:
            for conns, rate in ((100, 50), (200, 100)):
                pace = int(conns / rate * 1000)
                show(f"{api_mix.name} @{rate}/s", conns, stack.load(api_mix, conns, max(args.seconds, 20), pace_ms=pace))
    peaks = sampler.peaks
    print("  plan: 50-100 req/s with one API worker, p95 < 500 ms at 100-200 concurrent connections")
    if backlog:
        queued, seconds, left = backlog
        print(f"  worker: {queued} jobs queued when the POST levels ended (at rest before: {pending0}); "
              f"{queued - left} run in {seconds:.0f} s ({(queued - left) / seconds:.0f}/s), {left} left")

    limits = {}
    for c in stack.containers:
        limit = subprocess.run(["docker", "inspect", "-f", "{{.HostConfig.Memory}}", c.id], capture_output=True, text=True).stdout
        limits[c.service] = int(limit.strip() or 0)
    print("  memory (MB, as docker stats counts it)   limit    rest    peak    plan")
    for s in SERVICES:
        print(f"    {s:38} {limits.get(s, 0) / 2**20:6.0f}  {rest.get(s, 0) / 2**20:6.0f}  {peaks.get(s, 0) / 2**20:6.0f}  "
              f"{PLAN_MEMORY_MB[s]:6}")
    print(f"    {'stack total':38} {sum(limits.values()) / 2**20:6.0f}  {sum(rest.values()) / 2**20:6.0f}  "
          f"{sum(peaks.values()) / 2**20:6.0f}  rest {PLAN_REST_MB}, peak {PLAN_PEAK_MB}")
    errors = subprocess.run(["docker", "logs", stack.by_service["nginx"].id], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True).stderr.splitlines()
    errors = [e for e in errors if "[error]" in e or "[warn]" in e or "[crit]" in e or "[alert]" in e]
    print(f"  nginx error log: {len(errors)} lines" + "".join(f"\n    {e[:200]}" for e in errors[:3]))


if __name__ == "__main__":
    sys.exit(main())
