"""The bad-day drill as a benchmark, on a throwaway sandbox VPS and an SFTP server on this machine
(run as root): prints figures, asserts nothing.

    uv run python benchmarks/recovery.py [--runs 3] [--writers 2] [--after-backup-max 60]

The app is deployed once (WAL_ARCHIVE_TIMEOUT as the settings default it, 3 s) and its WAL archive
set up off-site. First, with nothing writing, what the archive sends off-site at idle is counted
(segments, bytes) for --idle-seconds. Then each run: writers keep POSTing tasks; a backup (pushed
off-site) is made; the writers go on for a random 0..N seconds; then the host is lost at that
random moment (every container, volume and file of the app, its off-site key, its cron jobs).
`recover --from-offsite` on the bare host brings the service back, and the next run loses that
recovered host in turn. Printed for each run: RTO (loss -> serving again, with the time to
authorize the new host's key on the SFTP server, which an operator does by hand); RPO
(acknowledged writes missing after recovery, and the span of time they cover before the loss);
the archive's lag sampled while the writes went on (every 0.5 s: how old the newest WAL segment on
the SFTP server was, i.e. how far the off-site copy trailed; and Postgres's own view,
now() - pg_stat_archiver.last_archived_time); what the archive cost under the writes (segments a
minute, bytes a day off-site, the postgres container's CPU). Goals (issue 26): RPO <= 5 s,
RTO <= 10 minutes.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import BIN, SftpServer, Writers, docker_gateway, lose_host, throwaway_sandbox  # noqa: E402

RPO_GOAL_S, RTO_GOAL_S = 5.0, 600.0


def offsite_segments(root: Path) -> dict[str, tuple[int, float]]:
    """The WAL segments in the SFTP server's pgBackRest repository: name -> (bytes, mtime)."""
    found = {}
    for dirpath, _, files in os.walk(root / "archive"):
        for name in files:
            if re.match(r"[0-9A-F]{24}-", name):
                st = os.stat(os.path.join(dirpath, name))
                found[name] = (st.st_size, st.st_mtime)
    return found


def cpu_seconds(container: str) -> float:
    """The container's CPU time so far (cgroup v1 cpuacct, or v2 cpu.stat)."""
    cid = subprocess.run(["docker", "inspect", "-f", "{{.Id}}", container], capture_output=True, text=True,
                         check=True).stdout.strip()
    for path in (f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage", f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat"):
        if os.path.exists(path):
            text = Path(path).read_text()
            return int(text) / 1e9 if path.endswith("usage") else int(re.search(r"usage_usec (\d+)", text).group(1)) / 1e6
    return float("nan")


class LagSampler:
    """Every 0.5 s while running: the age of the newest segment on the SFTP server (file mtime),
    and once a second Postgres's now() - last_archived_time. Samples start WARMUP_S after the
    writers: before that the newest segment is the idle one from before the writes."""

    WARMUP_S = 5.0

    def __init__(self, root: Path, container: str):
        self.root, self.container = root, container
        self.offsite: list[float] = []
        self.archiver: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        n = 0
        self.stop.wait(self.WARMUP_S)
        while not self.stop.is_set():
            segments = offsite_segments(self.root)
            if segments:
                self.offsite.append(time.time() - max(m for _, m in segments.values()))
            if n % 2 == 0:
                out = subprocess.run(["docker", "exec", self.container, "sh", "-c", 'psql -X -At -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c '
                                      '"SELECT extract(epoch FROM now() - last_archived_time) FROM pg_stat_archiver"'],
                                     capture_output=True, text=True)
                try:
                    self.archiver.append(float(out.stdout.strip()))
                except ValueError:
                    pass
            n += 1
            self.stop.wait(0.5)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)


def postgres_container(project: str) -> str:
    return subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}",
                           "--filter", "label=com.docker.compose.service=postgres"], capture_output=True, text=True,
                          check=True).stdout.split()[0]


def spread(values: list[float]) -> str:
    if not values:
        return "no samples"
    return f"median {statistics.median(values):.1f} s, max {max(values):.1f} s ({len(values)} samples)"


def cost_line(label: str, segments: dict, before: dict, seconds: float) -> str:
    new = {k: v for k, v in segments.items() if k not in before}
    size = sum(s for s, _ in new.values())
    per_segment = size / len(new) if new else 0
    return (f"  {label:<28}{len(new) * 60 / seconds:6.1f} segments/min, {size / 1024 / seconds * 86400 / 1024:7.1f} MB/day "
            f"off-site ({len(new)} segments, {per_segment / 1024:.1f} KB each compressed+encrypted, over {seconds:.0f} s)")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3, help="drills, each losing the host at a random moment")
    parser.add_argument("--writers", type=int, default=2, help="clients POSTing tasks")
    parser.add_argument("--after-backup-max", type=float, default=60, help="the host is lost 0..N s after the backup")
    parser.add_argument("--idle-seconds", type=float, default=60, help="how long the idle archive is measured")
    args = parser.parse_args()
    with throwaway_sandbox("127.0.0.8", "rc") as box:
        sftp = SftpServer(box.work, docker_gateway()).start()
        try:
            env = box.state / ".env"
            env.write_text(env.read_text() + f"OFFSITE_REPOSITORY={sftp.repository}\nOFFSITE_HOST_KEY={sftp.fingerprint}\n"
                           f"OFFSITE_PASSWORD=bench-{random.getrandbits(64):x}\n")
            box.run("fab", "-H", "sandbox", "deploy")
            project, app_dir = box.setting("COMPOSE_PROJECT"), Path("/home") / box.user / box.setting("APP_DIR")
            wal_root = sftp.home / "restic-pgbackrest"

            def authorize() -> float:
                """A new host has a new key: init prints it, the SFTP server's user authorizes it."""
                started = time.monotonic()
                init = subprocess.run([str(BIN / "fab"), "-H", "sandbox", "backup.offsite.init"], cwd=box.copy, env=box.env,
                                      capture_output=True, text=True)
                key = re.search(r"^\s+(ssh-ed25519 \S+ tasktracker-offsite@\S+)$", init.stdout, re.M)
                if not key:
                    raise SystemExit(f"no key to authorize:\n{init.stdout}\n{init.stderr}")
                sftp.authorize(key.group(1))
                box.run("fab", "-H", "sandbox", "backup.offsite.init")
                return time.monotonic() - started

            authorize()
            pg = postgres_container(project)
            conf = subprocess.run(["docker", "exec", pg, "cat", "/var/lib/pgbackrest/conf.d/archive.conf"], capture_output=True,
                                  text=True).stdout
            timeout = subprocess.run(["docker", "exec", pg, "sh", "-c", 'psql -X -At -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c '
                                      '"SHOW archive_timeout"'], capture_output=True, text=True).stdout.strip()
            print(f"archive_timeout {timeout}; pgBackRest archive-push asynchronous: {'archive-async=y' in conf}", flush=True)
            time.sleep(10)  # the segments init's first off-site backup finished are pushed
            before, cpu0, t0 = offsite_segments(wal_root), cpu_seconds(pg), time.monotonic()
            time.sleep(args.idle_seconds)
            idle_s = time.monotonic() - t0
            print("Idle (nothing writing):")
            print(cost_line("WAL sent off-site", offsite_segments(wal_root), before, idle_s))
            print(f"  postgres container CPU      {(cpu_seconds(pg) - cpu0) / idle_s * 100:5.1f} % of one core", flush=True)
            results = []
            for run in range(1, args.runs + 1):
                results.append(drill(run, box, sftp, args, project, app_dir, wal_root, authorize))
            print(f"\nSummary over {len(results)} runs (goals: RPO <= {RPO_GOAL_S:.0f} s, RTO <= {RTO_GOAL_S:.0f} s):")
            for run, (missing, acked, span, rto, lag) in enumerate(results, 1):
                print(f"  run {run}: RPO {missing}/{acked} writes lost, {span:.1f} s {'ok' if span <= RPO_GOAL_S else 'MISSED'}; "
                      f"RTO {rto:.0f} s {'ok' if rto <= RTO_GOAL_S else 'MISSED'}; off-site lag max {lag:.1f} s")
        finally:
            sftp.remove()
    return 0


def drill(run: int, box, sftp, args, project: str, app_dir: Path, wal_root: Path, authorize) -> tuple:
    url = f"http://{box.address}:{box.http_port}/api/tasks"
    pg = postgres_container(project)
    with Writers(url, clients=args.writers, max_seconds=900) as writers, LagSampler(wal_root, pg) as lag:
        time.sleep(3)
        backup_s, _ = box.run("fab", "-H", "sandbox", "backup")
        backup_done = time.monotonic()
        before, cpu0, acked0 = offsite_segments(wal_root), cpu_seconds(pg), len(writers.acknowledged)
        time.sleep(random.uniform(0, args.after_backup_max))
        window = time.monotonic() - backup_done
        segments, cpu1, acked1 = offsite_segments(wal_root), cpu_seconds(pg), len(writers.acknowledged)
        # The database dies first and at once (SIGKILL: no shutdown, no last archive), then the
        # rest of the host: `docker rm -f` of every container one by one takes seconds, during
        # which Postgres would go on archiving and the RPO would look smaller than it is.
        subprocess.run(["docker", "kill", pg], capture_output=True, check=True)
        lost_at = time.monotonic()
        lose_host(box.user, app_dir, project)
    authorize_s = authorize()
    # The sandbox's copy of the project is not a git checkout: recover cannot match the set's commit.
    recover_s, _ = box.run("fab", "-H", "sandbox", "recover", "--from-offsite", "--skip-build", "--any-checkout")
    rto = time.monotonic() - lost_at
    with urllib.request.urlopen(url, timeout=10) as res:
        assert res.status == 200
    present = {int(i) for i in subprocess.run(
        ["docker", "compose", "-p", project, "exec", "-T", "postgres", "psql", "-U", "postgres", "-d", "tasktracker",
         "-Atc", "select id from tasks"], capture_output=True, text=True, check=True).stdout.split()}
    missing = [(i, t) for i, t in writers.acknowledged_at if i not in present]
    span = (lost_at - min(t for _, t in missing)) if missing else 0.0
    print(f"\nRun {run}: {args.writers} writers, host lost {lost_at - backup_done:.1f} s after the last off-site set:")
    print(f"  backup with off-site copy   {backup_s:7.1f} s")
    print(f"  authorize the new host key  {authorize_s:7.1f} s (by hand on a real day)")
    print(f"  recover --from-offsite      {recover_s:7.1f} s")
    print(f"  RTO (lost -> serving)       {rto:7.1f} s   goal <= {RTO_GOAL_S:.0f} s")
    print(f"  RPO                         {len(missing)} of {len(writers.acknowledged_at)} acknowledged writes missing, "
          f"covering the last {span:.1f} s before the loss   goal <= {RPO_GOAL_S:.0f} s")
    print(f"  off-site lag while writing  {spread(lag.offsite)}   goal <= {RPO_GOAL_S:.0f} s")
    print(f"  archiver lag (Postgres)     {spread(lag.archiver)}")
    if window >= 5:
        print(f"  writes                      {(acked1 - acked0) / window:6.1f} acknowledged/s")
        print(cost_line("WAL sent off-site", segments, before, window))
        print(f"  postgres container CPU      {(cpu1 - cpu0) / window * 100:5.1f} % of one core (Postgres and pgBackRest)")
    print(f"  off-site WAL archive now    {sum(s for s, _ in offsite_segments(wal_root).values()) / 1024 / 1024:.1f} MB "
          f"({len(offsite_segments(wal_root))} segments)", flush=True)
    return len(missing), len(writers.acknowledged_at), span, rto, max(lag.offsite, default=float("nan"))


if __name__ == "__main__":
    raise SystemExit(main())
