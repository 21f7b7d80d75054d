"""Background jobs are never lost (issue 25), on the sandbox: writers POST tasks throughout while
the worker is killed (`kill -9`, as the OOM killer does), NATS is killed the same way, a backup
runs and a deploy replaces the worker. After each, every acknowledged task is processed (status
done) within a bounded time, no read fails, and no task is processed twice. Each case prints its
acknowledged and refused writes, jobs lost, repeated runs and the time the backlog took to drain."""

import collections
import json
import os
import re
import signal
import subprocess
import time
import urllib.request

import pytest

from tests.support import LoadProbe, Writers, wait_for

pytestmark = pytest.mark.e2e
APP = "jb"
DRAIN_SECONDS = 150  # JOB_REQUEUE_AFTER (10 s) + JOB_ACK_WAIT (10 s) + a worker or NATS restarted


@pytest.fixture(scope="module")
def app(sandbox, deployed):
    env = sandbox.app_env(APP, "jobs", JOB_REQUEUE_AFTER="10", JOB_ACK_WAIT="10")
    sandbox.fab("deploy", "--skip-build", env_file=env)
    return env


def compose(sandbox, *args: str, check=True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "compose", "-p", f"{sandbox.project}-{APP}", *args], capture_output=True, text=True,
                          check=check, timeout=300)


def psql(sandbox, sql: str) -> str:
    return compose(sandbox, "exec", "-T", "postgres", "psql", "-U", "postgres", "-d", "tasktracker", "-Atc", sql).stdout.strip()


def kill_9(sandbox, service: str) -> None:
    """`kill -9` of the service's main process from the host, as the OOM killer does (a `docker kill`
    counts as stopped on purpose: the restart policy would leave the container down)."""
    container = compose(sandbox, "ps", "-q", service).stdout.strip()
    pid = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", container], capture_output=True, text=True,
                         check=True).stdout.strip()
    os.kill(int(pid), signal.SIGKILL)


def not_done(sandbox, ids: set[int]) -> set[int]:
    if not ids:
        return set()
    done = psql(sandbox, f"SELECT id FROM tasks WHERE status = 'done' AND id IN ({','.join(map(str, ids))})")
    return ids - {int(i) for i in done.split()}


def processed_twice(sandbox) -> list[int]:
    """Tasks whose job did its work more than once, from the worker's log ("processed task N")."""
    logs = compose(sandbox, "logs", "--no-log-prefix", "worker").stdout
    counts = collections.Counter(int(n) for n in re.findall(r"processed task (\d+) ", logs))
    return sorted(n for n, c in counts.items() if c > 1)


def under_writers(sandbox, name: str, fault) -> Writers:
    url = sandbox.app_url(APP, "/api/tasks")
    with Writers(url, clients=2) as writers, LoadProbe([url], clients=1) as probe:
        time.sleep(3)
        fault()
        time.sleep(5)
    acknowledged = set(writers.acknowledged)
    stopped = time.monotonic()
    while (left := not_done(sandbox, acknowledged)) and time.monotonic() - stopped < DRAIN_SECONDS:
        time.sleep(2)
    drained = time.monotonic() - stopped
    twice = processed_twice(sandbox)
    repeated = len(re.findall(r"a repeated job", compose(sandbox, "logs", "worker").stdout))
    print(f"\njobs, {name}: {len(acknowledged)} acknowledged writes, {len(writers.errors)} refused, "
          f"{len(left)} jobs lost, {len(twice)} processed twice ({repeated} repeated deliveries skipped), "
          f"backlog drained {drained:.1f} s after the writers stopped; {len(probe.failures())} of "
          f"{len(probe.results)} reads failed; slowest write {writers.slowest:.2f} s")
    assert acknowledged and not left, sorted(left)[:20]
    assert writers.errors == [] and probe.failures() == [], (writers.errors[:5], writers.refused[:5],
                                                            probe.failures()[:5])
    assert twice == [], twice[:20]
    return writers


def test_the_worker_killed_loses_no_job(sandbox, app):
    under_writers(sandbox, "worker killed", lambda: kill_9(sandbox, "worker"))


def test_nats_killed_loses_no_job_and_the_worker_takes_jobs_again(sandbox, app):
    under_writers(sandbox, "NATS killed", lambda: kill_9(sandbox, "nats"))
    # The same worker, or its restarted self, takes new jobs: the job path works, not only the processes.
    req = urllib.request.Request(sandbox.app_url(APP, "/api/tasks"), data=json.dumps({"title": "after NATS"}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as res:
        task = json.loads(res.read())["id"]
    wait_for(lambda: not not_done(sandbox, {task}), 60, interval=1, what="a new task processed")
    health = compose(sandbox, "ps", "--format", "{{.Service}} {{.Health}}").stdout
    assert re.search(r"^worker healthy$", health, re.M), health


def test_a_backup_loses_no_job(sandbox, app):
    """NATS is paused while its store is copied: writes wait, none fails, no job is lost."""
    done = []
    under_writers(sandbox, "backup", lambda: done.append(sandbox.fab("backup", env_file=app)))
    name = re.search(r"Backup (\S+) is complete", done[0].stdout).group(1)
    manifest = json.loads((sandbox.home / APP / "backups" / name / "manifest.json").read_text())
    paused = manifest["seconds"]["nats_paused"]
    print(f"backup under writers: NATS paused {paused:.2f} s")
    assert 0 < paused < 10, manifest


def test_a_deploy_that_replaces_the_worker_loses_no_job(sandbox, app):
    changed = sandbox.app_env(APP, "jobs-changed", JOB_REQUEUE_AFTER="10", JOB_ACK_WAIT="10", JOB_MAX_REQUEUES="6")
    under_writers(sandbox, "deploy replacing the worker", lambda: sandbox.fab("deploy", "--skip-build", env_file=changed))
