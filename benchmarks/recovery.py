"""The bad-day drill as a benchmark (run as root): prints figures, asserts nothing.

    uv run python benchmarks/recovery.py [--runs 3] [--writers 2] [--after-backup-max 60] [--sandbox]

By default on VM-like hosts (`invoke testhost.*`) and an SFTP server on this machine: a bare host
is provisioned, deployed (WAL_ARCHIVE_TIMEOUT as the settings default it, 3 s) and its WAL archive
and off-site copies set up. Each run: writers keep POSTing tasks; a backup (pushed off-site) is
made; the writers go on for a random 0..N seconds; then the database is killed and the whole host
removed at that random moment. A new bare host is made and the README's bad-day steps run on it
(`provision`, `backup.offsite.init` with its key authorized on the SFTP server, `recover
--from-offsite`) while a reader polls it; the next run loses that host in turn. Printed for each
run: each phase's time and recover's own steps; RTO (from the operator's first step on the new
host, provision, to its first 200: the lab's seconds to remove the lost host are shown apart); RPO
(acknowledged writes missing after recovery, and the span of time they cover before the loss); the
off-site archive's lag while the writes went on (every 0.5 s, the age of the newest WAL segment on
the SFTP server); the 2xx answers served with data the recovery had not finished. Goals (issue
26): RPO <= 5 s, RTO <= 90 s, 0 wrong answers.

`--sandbox`: the quicker drill on one sandbox host (the app's containers, volumes and files
removed, then recovered on the same host: no provision, images kept), which also measures what
the archive costs at idle and under the writes (segments a minute, bytes a day off-site, the
postgres container's CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import (BIN, Readers, SftpServer, TestHosts, Writers, app_settings, docker_gateway,  # noqa: E402
                           lose_host, throwaway_sandbox, wait_for)

RPO_GOAL_S, RTO_GOAL_S = 5.0, 90.0


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

    def __init__(self, root: Path, archiver_age):
        """`archiver_age()`: Postgres's now() - last_archived_time, as psql prints it."""
        self.root, self.archiver_age = root, archiver_age
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
                out = self.archiver_age()
                try:
                    self.archiver.append(float(out.strip()))
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
    parser.add_argument("--sandbox", action="store_true",
                        help="the quicker drill: lose and recover the app on one sandbox host (no provision, "
                             "images kept), with the archive's idle and loaded costs")
    args = parser.parse_args()
    if not args.sandbox:
        return bare_main(args)
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
    age = ["docker", "exec", pg, "sh", "-c", 'psql -X -At -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c '
           '"SELECT extract(epoch FROM now() - last_archived_time) FROM pg_stat_archiver"']
    with Writers(url, clients=args.writers, max_seconds=900) as writers, \
            LagSampler(wal_root, lambda: subprocess.run(age, capture_output=True, text=True).stdout) as lag:
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



# The drill on VM-like hosts (the default): every run ends the serving host outright (the whole
# VM-like host: its Docker Engine, volumes and files) and recovers onto a new bare one, provision
# included, as an operator with only the README would.


def nested_postgres(hosts: TestHosts, name: str, command: str) -> subprocess.CompletedProcess:
    """`command` (sh) in the postgres container of test host `name`'s own Docker Engine."""
    return hosts.exec(name, "docker exec \"$(docker ps -q --filter "
                            "label=com.docker.compose.service=postgres)\" " + command, check=False)


def authorize_on(hosts: TestHosts, name: str, settings: Path, sftp) -> float:
    """A new host has a new key: `backup.offsite.init` prints it, the SFTP server authorizes it, and
    init runs again (by hand on a real day)."""
    started = time.monotonic()
    init = hosts.fab(name, "backup.offsite.init", env_file=settings, check=False)
    key = re.search(r"^\s+(ssh-ed25519 \S+ tasktracker-offsite@\S+)$", init.stdout, re.M)
    if not key:
        raise SystemExit(f"no key to authorize:\n{init.stdout}\n{init.stderr}")
    sftp.authorize(key.group(1))
    hosts.fab(name, "backup.offsite.init", env_file=settings)
    return time.monotonic() - started


def timed(phases: dict, label: str, action):
    started = time.monotonic()
    result = action()
    phases[label] = time.monotonic() - started
    return result


def bare_main(args) -> int:
    hosts = TestHosts(dict(os.environ))
    work = Path(tempfile.mkdtemp(prefix="tasktracker-drill-"))  # testhost.down empties hosts.dir
    sftp = SftpServer(work, docker_gateway()).start()
    settings = app_settings(work / "app.env", OFFSITE_REPOSITORY=sftp.repository,
                            OFFSITE_HOST_KEY=sftp.fingerprint,
                            OFFSITE_PASSWORD=f"bench-{random.getrandbits(64):x}")
    try:
        name = "rcb1"
        hosts.invoke("testhost.up", name, "--bare")
        hosts.fab(f"{name}-root", "provision")
        hosts.fab(name, "deploy", "--skip-build", env_file=settings)
        authorize_on(hosts, name, settings, sftp)
        print(f"first host {name}: provisioned, deployed, WAL archive and off-site copies set up",
              flush=True)
        results = []
        for run in range(1, args.runs + 1):
            result, name = bare_drill(run, hosts, name, settings, sftp, args)
            results.append(result)
        print(f"\nSummary over {len(results)} runs on VM-like hosts, each recovered onto a bare "
              f"host (goals: RPO <= {RPO_GOAL_S:.0f} s, RTO <= {RTO_GOAL_S:.0f} s, 0 wrong "
              "answers served):")
        for run, (missing, acked, span, rto, lag, wrong) in enumerate(results, 1):
            print(f"  run {run}: RPO {missing}/{acked} writes lost, {span:.1f} s "
                  f"{'ok' if span <= RPO_GOAL_S else 'MISSED'}; RTO {rto:.0f} s "
                  f"{'ok' if rto <= RTO_GOAL_S else 'MISSED'}; off-site lag max {lag:.1f} s; "
                  f"{wrong} wrong answers served {'ok' if wrong == 0 else 'MISSED'}")
    finally:
        sftp.remove()
        hosts.down()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def bare_drill(run: int, hosts: TestHosts, name: str, settings: Path, sftp, args) -> tuple:
    wal_root = sftp.home / "restic-pgbackrest"
    pg_age = ('sh -c \'psql -X -At -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "SELECT extract(epoch '
              'FROM now() - last_archived_time) FROM pg_stat_archiver"\'')
    # The bare host to recover onto is made first, as a provider's console hands one out: the
    # RTO counts what the operator and the toolkit do from the loss on.
    new, phases = f"rcb{run + 1}", {}
    hosts.invoke("testhost.up", new, "--bare")
    with Writers(hosts.url(name, "/api/tasks"), clients=args.writers, max_seconds=900) as writers, \
            LagSampler(wal_root, lambda: nested_postgres(hosts, name, pg_age).stdout) as lag:
        time.sleep(3)
        hosts.fab(name, "backup", env_file=settings)
        backup_done = time.monotonic()
        time.sleep(random.uniform(0, args.after_backup_max))
        # The database dies first and at once (SIGKILL: no shutdown, no last archive), then the
        # whole host goes.
        hosts.exec(name, "docker kill \"$(docker ps -q --filter "
                         "label=com.docker.compose.service=postgres)\"")
        lost_at = time.monotonic()
    hosts.invoke("testhost.down", "--name", name)
    with Readers(hosts.url(new), ["/api/tasks"]) as readers:
        # From here on the clock runs for the operator: what went before (the writers' last
        # requests timing out, the lab removing the host) is the loss itself, not the recovery.
        began = time.monotonic()
        timed(phases, "provision", lambda: hosts.fab(f"{new}-root", "provision"))
        phases["authorize its off-site key"] = authorize_on(hosts, new, settings, sftp)
        out = timed(phases, "recover --from-offsite", lambda: hosts.fab(
            new, "recover", "--from-offsite", "--skip-build", "--any-checkout", env_file=settings))
        wait_for(lambda: any(status == 200 and t > lost_at for t, _, status, _ in readers.answers),
                 60, what="the recovered host serving")
        serving = min(t for t, _, status, _ in readers.answers if status == 200 and t > lost_at)
        time.sleep(1)
    rto = serving - began
    ids = nested_postgres(hosts, new, "sh -c 'psql -X -At -U \"$POSTGRES_USER\" -d \"$POSTGRES_DB\" "
                                      "-c \"SELECT id FROM tasks\"'").stdout.split()
    present = {int(i) for i in ids}
    missing = [(i, t) for i, t in writers.acknowledged_at if i not in present]
    span = (lost_at - min(t for _, t in missing)) if missing else 0.0
    newest = max(present & set(writers.acknowledged), default=0)
    wrong = [body[:60] for _, _, status, body in readers.answers if 200 <= status < 300
             and max((task["id"] for task in json.loads(body)), default=0) < newest]
    print(f"\nRun {run}: {args.writers} writers, host {name} lost "
          f"{lost_at - backup_done:.1f} s after the last backup, recovered onto bare host {new}:")
    for label, seconds in phases.items():
        print(f"  {label:<28}{seconds:7.1f} s")
    said = [line for line in out.stdout.splitlines() if re.search(r"\d+\.\ds\s+ok$", line)]
    for line in said:
        print(f"    recover {line.strip()}")
    print(f"  RTO (provision -> serving)  {rto:7.1f} s   goal <= {RTO_GOAL_S:.0f} s "
          f"(the loss itself took the lab {began - lost_at:.1f} s more: not counted)")
    print(f"  RPO                         {len(missing)} of {len(writers.acknowledged_at)} "
          f"acknowledged writes missing, covering the last {span:.1f} s before the loss   "
          f"goal <= {RPO_GOAL_S:.0f} s")
    print(f"  off-site lag while writing  {spread(lag.offsite)}   goal <= {RPO_GOAL_S:.0f} s")
    print(f"  answers during recovery     {len(wrong)} 2xx with data the recovery had not "
          f"finished (goal 0); {sum(1 for a in readers.answers if a[2] == 503)} answered 503",
          flush=True)
    return (len(missing), len(writers.acknowledged_at), span, rto,
            max(lag.offsite, default=float("nan")), len(wrong)), new


if __name__ == "__main__":
    raise SystemExit(main())
