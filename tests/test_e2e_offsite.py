"""Off-site copies (issue 15) on the sandbox, to a real SFTP server with restic: the host's key is
authorized as an operator would, every full set is pushed, backup.list shows where sets live,
the drill restores the newest copy into a scratch database, a failed push keeps the set and is
loud, a corrupted file in the repository is found by `check`, and the password never shows."""

import json
import re
import secrets
import subprocess
import time
import urllib.request

import pytest

from tasks.settings import Settings
from tests.support import ROOT, Readers, SftpServer, Writers, docker_gateway, lose_host, service_container, wait_for

pytestmark = pytest.mark.e2e
APP = "os"
PASSWORD = f"offsite-{secrets.token_hex(8)}"
# WAL_ARCHIVE_TIMEOUT as the settings default it (3 s): the archive, off-site copy included,
# trails the database by that plus a push, so a lost host takes at most RPO_GOAL_S of writes.
ARCHIVE_TIMEOUT = Settings.__dataclass_fields__["wal_archive_timeout"].default
RPO_GOAL_S = 5  # issue 26
# The checkpointer checks archive_timeout in whole seconds, so a switch comes up to 1 s late, and
# a push on a busy machine takes longer: in the full suite the other lane's stacks share the two
# cores (CPU idle about 10 %). The goal itself is held by benchmarks/recovery.py (three drills,
# 1.5-3.1 s); this bound still fails at once on the old 60 s timeout.
RPO_MARGIN_S = 5


def post_task(sandbox, title: str) -> int:
    req = urllib.request.Request(sandbox.app_url(APP, "/api/tasks"), data=json.dumps({"title": title}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as res:
        return json.loads(res.read())["id"]


def local_sets(sandbox) -> list[str]:
    root = sandbox.home / APP / "backups"
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name[:1].isdigit())


def everything_said(*outs) -> str:
    return "\n".join(o.stdout + o.stderr for o in outs)


@pytest.fixture(scope="module")
def sftp(sandbox):
    server = SftpServer(sandbox.dir, docker_gateway()).start()
    yield server
    server.remove()


@pytest.fixture(scope="module")
def app(sandbox, deployed, sftp):
    env = sandbox.app_env(APP, "offsite", OFFSITE_REPOSITORY=sftp.repository, OFFSITE_PASSWORD=PASSWORD,
                          OFFSITE_HOST_KEY=sftp.fingerprint)
    sandbox.fab("deploy", "--skip-build", env_file=env)
    return env


def refused_at_the_server_key(sandbox, sftp, pin: str):
    """init with OFFSITE_HOST_KEY=`pin` (empty or wrong): stopped before anything on the host changes."""
    env = sandbox.app_env(APP, f"pin{len(pin)}", OFFSITE_REPOSITORY=sftp.repository, OFFSITE_PASSWORD=PASSWORD,
                          OFFSITE_HOST_KEY=pin)
    known = sandbox.home / ".ssh" / "known_hosts"
    before = known.read_text() if known.exists() else ""
    out = sandbox.fab("backup.offsite.init", env_file=env, check=False)
    assert f"{sftp.address}:{sftp.port} offers {sftp.fingerprint} (ED25519)" in out.stderr, everything_said(out)
    assert "Nothing was changed on the host or off-site" in out.stderr
    assert not (sandbox.home / APP / "bin" / "tasktracker-offsite").exists()  # not installed
    assert (known.read_text() if known.exists() else "") == before  # the server not trusted
    return out


@pytest.fixture(scope="module")
def initialised(sandbox, app, sftp):
    # The SFTP server's key is never trusted on first use: OFFSITE_HOST_KEY must name it.
    unset = refused_at_the_server_key(sandbox, sftp, "")
    assert unset.returncode == 2 and "OFFSITE_HOST_KEY is not set" in unset.stderr, everything_said(unset)
    wrong = refused_at_the_server_key(sandbox, sftp, "SHA256:" + "A" * 43)
    assert wrong.returncode == 1 and "none is OFFSITE_HOST_KEY (SHA256:AAAA" in wrong.stderr, everything_said(wrong)
    first = sandbox.fab("backup.offsite.init", env_file=app, check=False)
    assert f"host key {sftp.fingerprint} (OFFSITE_HOST_KEY) is the one it offers" in first.stdout, first.stdout
    # The key is not authorized yet: a clear failure that shows the key to authorize.
    assert first.returncode == 1, everything_said(first)
    said = everything_said(first)
    assert f"The SFTP server {sftp.address} does not accept sandbox's key yet" in first.stderr, said
    assert "Nothing was lost or changed" in first.stderr and "Fatal:" not in first.stderr, said
    key = re.search(r"^\s+(ssh-ed25519 \S+ tasktracker-offsite@\S+)$", first.stdout, re.M)
    assert key, first.stdout
    assert f"\n  {key.group(1)}\nto ~{sftp.user}/.ssh/authorized_keys on {sftp.address}" in said
    sftp.authorize(key.group(1))
    second = sandbox.fab("backup.offsite.init", env_file=app)
    assert "repository created" in second.stdout
    assert "The WAL archive is copied off-site too" in second.stdout, second.stdout  # pgBackRest's repo2, on the same server
    assert "repository exists" in sandbox.fab("backup.offsite.init", env_file=app).stdout
    assert PASSWORD not in everything_said(first, second)
    return app


def test_every_full_set_is_copied_and_listed_where_it_lives(sandbox, initialised, sftp):
    ids = [post_task(sandbox, f"off-site task {i}") for i in range(5)]
    out = sandbox.fab("backup", env_file=initialised)
    assert "off-site copy of" in out.stdout, out.stdout
    newest = local_sets(sandbox)[-1]
    listed = sandbox.fab("backup.list", env_file=initialised).stdout
    assert re.search(rf"{newest} .* on: both", listed), listed
    assert newest in sandbox.fab("backup.offsite.list", env_file=initialised).stdout
    status = sandbox.fab("backup.offsite.status", env_file=initialised).stdout
    assert f"newest      {newest}" in status and "ok" in status.splitlines()[-1], status
    assert f"off-site {newest}: copied at" in sandbox.fab("status", env_file=initialised).stdout
    # The repository on the SFTP server is restic's, encrypted: no task title in it.
    repo = subprocess.run(["grep", "-rl", "off-site task", str(sftp.home / "restic")], capture_output=True, text=True)
    assert repo.stdout == "", repo.stdout
    assert PASSWORD not in out.stdout + out.stderr + listed
    assert len(ids) == 5


def test_drill_restores_the_newest_copy_into_a_scratch_database(sandbox, initialised):
    before = subprocess.run(["docker", "compose", "-p", f"{sandbox.project}-{APP}", "exec", "-T", "postgres", "psql", "-U",
                             "postgres", "-d", "tasktracker", "-Atc", "select datname from pg_database order by 1"],
                            capture_output=True, text=True, check=True).stdout
    out = sandbox.fab("backup.drill", env_file=initialised)
    assert "row counts match" in out.stdout, out.stdout
    tasks = re.search(r"^\s+tasks\s+(\d+)$", out.stdout, re.M)
    assert tasks and int(tasks.group(1)) >= 5, out.stdout
    after = subprocess.run(["docker", "compose", "-p", f"{sandbox.project}-{APP}", "exec", "-T", "postgres", "psql", "-U",
                            "postgres", "-d", "tasktracker", "-Atc", "select datname from pg_database order by 1"],
                           capture_output=True, text=True, check=True).stdout
    assert before == after  # the scratch database is gone; the live one untouched
    audit = (sandbox.home / APP / "audit.log").read_text() if (sandbox.home / APP / "audit.log").exists() else ""
    assert PASSWORD not in audit


def test_a_failed_push_keeps_the_set_is_loud_and_can_be_retried(sandbox, initialised, sftp):
    before = local_sets(sandbox)
    with sftp.refusing_keys():  # the off-site server turns the host away
        out = sandbox.fab("backup", env_file=initialised, check=False)
        assert out.returncode == 1, everything_said(out)
        assert "OFF-SITE COPY FAILED" in out.stderr and "The set is kept on the host" in out.stderr, out.stderr
        after = local_sets(sandbox)
        assert len(after) == len(before) + 1  # made, verified and kept
        doctor = sandbox.fab("doctor", env_file=initialised, check=False).stdout
        assert f"the off-site copy of {after[-1]} failed" in doctor, doctor
        assert sandbox.fab("backup.offsite.status", env_file=initialised, check=False).returncode != 0
    retry = sandbox.fab("backup.offsite.push", env_file=initialised)
    assert f"{after[-1]} is copied off-site" in retry.stdout
    assert "the off-site copy of" not in sandbox.fab("doctor", env_file=initialised, check=False).stdout
    assert PASSWORD not in everything_said(out, retry)


def present_ids(project: str, where: str) -> set[int]:
    return {int(i) for i in subprocess.run(
        ["docker", "compose", "-p", project, "exec", "-T", "postgres", "psql", "-U", "postgres", "-d", "tasktracker", "-Atc",
         f"select id from tasks where {where}"], capture_output=True, text=True, check=True).stdout.split()}


def archiver(sandbox) -> dict:
    """pg_stat_archiver in the app's Postgres: failures, the last failure and success (epoch)."""
    query = ("select failed_count, coalesce(extract(epoch from last_failed_time)::bigint, 0), "
             "coalesce(extract(epoch from last_archived_time)::bigint, 0) from pg_stat_archiver")
    out = psql(sandbox, query).split()
    return dict(zip(("failed", "last_failed", "last_archived"), map(int, out), strict=True))


def psql(sandbox, query: str) -> str:
    """One query in the app's database, as psql -At prints it (columns joined by a space)."""
    project = f"{sandbox.project}-{APP}"
    return subprocess.run(["docker", "compose", "-p", project, "exec", "-T", "postgres", "psql",
                           "-U", "postgres", "-d", "tasktracker", "-AtF", " ", "-c", query],
                          capture_output=True, text=True, check=True).stdout


def written(sandbox, predicate) -> bool:
    """Write (a task, and a finished WAL segment for the archiver), then ask `predicate`."""
    post_task(sandbox, "archive test")
    psql(sandbox, "select pg_switch_wal()")
    return predicate(archiver(sandbox))


def sampled_archive(sandbox) -> str:
    """Run the host's sampler once, as cron does, and read the archive verdict its alert keeps."""
    app = sandbox.home / APP
    sampler = app / "bin" / "tasktracker-sample"
    project = f"{sandbox.project}-{APP}"
    subprocess.run(["runuser", "-u", sandbox.user, "--", str(sampler), str(app), project],
                   check=True, capture_output=True, timeout=120)
    return (app / "shared" / "metrics" / ".archive").read_text().strip()


def test_a_failing_wal_archive_is_reported_until_it_archives_again(sandbox, initialised, sftp):
    """Issue 26: the off-site WAL archive's directory turns unwritable (as a full disk or a broken
    server would), writes go on, and the archiver records failures: `doctor` fails naming the
    archive and `status` says ARCHIVING IS FAILING. Once the server takes writes again and the
    archiver catches up, both stop saying so."""
    before = archiver(sandbox)
    with sftp.unwritable(sftp.home / "restic-pgbackrest"):
        wait_for(lambda: written(sandbox, lambda a: a["failed"] > before["failed"]
                                 and a["last_failed"] > a["last_archived"]),
                 timeout=180, interval=3, what="the archiver's failures")
        doctor = sandbox.fab("doctor", env_file=initialised, check=False)
        assert doctor.returncode == 1, everything_said(doctor)
        said = doctor.stdout
        assert "[WAL archive] archiving WAL is failing: the last attempt failed at" in said, said
        status = sandbox.fab("status", env_file=initialised).stdout
        assert "ARCHIVING IS FAILING: the last attempt failed at" in status, status
        assert "  ! WAL archive: archiving WAL is failing" in status, status
        assert re.search(r"^wal      pg_wal [\d.]+ MB of the [\d.]+ GB disk", status, re.M), status
        assert sampled_archive(sandbox) == "failing"  # the alert's verdict (sent to any channel)
    wait_for(lambda: written(sandbox, lambda a: a["last_archived"] > a["last_failed"]), timeout=180,
             interval=3, what="the archiver to archive again")
    # Every failed push left a pgBackRest process that exited non-zero: reaped by Docker's init, it
    # never put the database through crash recovery (the postmaster as PID 1 would have).
    said = subprocess.run(["docker", "logs", service_container(f"{sandbox.project}-{APP}", "postgres")], capture_output=True, text=True)
    logs = said.stdout + said.stderr
    assert "terminating any other active server processes" not in logs, [
        line for line in logs.splitlines() if "exit code" in line or "terminating" in line][:5]
    doctor = sandbox.fab("doctor", env_file=initialised, check=False)
    assert "[WAL archive]" not in doctor.stdout, doctor.stdout
    status = sandbox.fab("status", env_file=initialised).stdout
    assert "ARCHIVING IS FAILING" not in status and "! WAL archive" not in status, status
    assert "WAL archived up to" in status and "COULD NOT BE READ" not in status, status
    assert sampled_archive(sandbox) == "ok"


def test_schedule_installs_the_monthly_drill_and_weekly_check(sandbox, initialised):
    saved = subprocess.run(["crontab", "-l", "-u", sandbox.user], capture_output=True, text=True).stdout
    try:
        scheduled(sandbox, initialised)
    finally:  # no real 02:00 backup, drill or check may start during the rest of the run
        subprocess.run(["crontab", "-u", sandbox.user, "-"], input=saved, text=True, check=True)


def scheduled(sandbox, initialised):
    out = sandbox.fab("backup.schedule", env_file=initialised)
    assert "restore drill runs monthly" in out.stdout
    crontab = subprocess.run(["crontab", "-l", "-u", sandbox.user], capture_output=True, text=True).stdout
    project = f"{sandbox.project}-{APP}"
    for kind in ("backup", "drill", "check"):
        assert any(line.endswith(f"# tasktracker-{kind}:{project}") for line in crontab.splitlines()), crontab
    assert PASSWORD not in crontab
    check = [line for line in crontab.splitlines() if line.endswith(f"# tasktracker-check:{project}")][0]
    command = check.split(" ", 5)[5].split(" # tasktracker-")[0]
    ran = subprocess.run(["runuser", "-u", sandbox.user, "--", "bash", "-c", f"cd ~ && {command}"], capture_output=True, text=True,
                         timeout=300)
    assert ran.returncode == 0, (ran.stdout, ran.stderr)


def test_recover_from_offsite_after_the_host_is_lost(sandbox, initialised, sftp):
    """Writers keep POSTing; a backup is copied off-site; the writes go on for more than twice the
    WAL archive's timeout (WAL_ARCHIVE_TIMEOUT, 3 s by default) and the host is destroyed while they
    do; `recover` on the bare host brings the service back with the set, then the WAL archived
    off-site: only the writes of the last archive timeout or so may be missing."""
    project = f"{sandbox.project}-{APP}"
    live = sandbox.home / APP / "shared" / "letsencrypt" / "live" / "recover.example.test"
    live.mkdir(parents=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "90",
                    "-subj", "/CN=recover.example.test", "-keyout", str(live / "privkey.pem"), "-out", str(live / "cert.pem")],
                   check=True, capture_output=True)
    subprocess.run(["chown", "-R", f"{sandbox.user}:{sandbox.user}", str(sandbox.home / APP / "shared" / "letsencrypt")], check=True)
    certificate = (live / "cert.pem").read_bytes()
    with Writers(sandbox.app_url(APP, "/api/tasks"), clients=2) as writers:
        time.sleep(2)
        before_backup = list(writers.acknowledged)
        sandbox.fab("backup", env_file=initialised)
        time.sleep(2 * ARCHIVE_TIMEOUT + 10)
        # The database dies first and at once (SIGKILL: no last archive), then the rest of the
        # host: removing every container one by one takes seconds, during which Postgres would go
        # on archiving and the RPO would look smaller than it is.
        pg = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}", "--filter",
                             "label=com.docker.compose.service=postgres"], capture_output=True, text=True, check=True).stdout.split()
        subprocess.run(["docker", "kill", *pg], capture_output=True, check=True)
        lost_at = time.monotonic()
        lose_host(sandbox.user, sandbox.home / APP, project)
    acknowledged = set(writers.acknowledged)
    assert before_backup and acknowledged
    init = sandbox.fab("backup.offsite.init", env_file=initialised, check=False)  # a new host: a new key to authorize
    key = re.search(r"^\s+(ssh-ed25519 \S+ tasktracker-offsite@\S+)$", init.stdout, re.M)
    assert key, everything_said(init)
    sftp.authorize(key.group(1))
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    # A reader and a writer run through the whole recovery (issue 26): nothing is served that the
    # recovery will replace, and no write is taken that it would throw away.
    with Readers(sandbox.app_url(APP, ""), ["/api/tasks", "/api/health", "/"], max_seconds=900) as readers, \
            Writers(sandbox.app_url(APP, "/api/tasks"), clients=1, max_seconds=900, title="after") as during:
        if dirty:  # a checkout with uncommitted changes is not the set's commit: refused, nothing changed
            refused = sandbox.fab("recover", "--from-offsite", "--skip-build", env_file=initialised, check=False)
            assert refused.returncode == 5 and f"`git checkout {head[:7]}" in refused.stderr, everything_said(refused)
            assert "Nothing was changed on sandbox" in refused.stderr
            assert not (sandbox.home / APP / ".recovering").exists() and not (sandbox.home / APP / "current").exists()
        out = sandbox.fab("recover", "--from-offsite", "--skip-build", *(["--any-checkout"] if dirty else []),
                          env_file=initialised)
        rto = time.monotonic() - lost_at
        recovered = time.monotonic()
        wait_for(lambda: any(t > recovered for t, *_ in readers.answers) and during.acknowledged, timeout=60,
                 what="a read and a write after the recovery")
    assert "with the data of off-site set" in out.stdout and "the database at the last WAL archived off-site" in out.stdout, out.stdout
    said = out.stdout
    # The commit is named before anything changes on the host.
    first = said.index(f"recover deploys commit {head[:7]}")
    assert first < said.index("-> maintenance on") < said.index("-> fetch the off-site set"), said
    set_name = re.search(r"with the data of off-site set (\d{8}T\d{6}Z)", said).group(1)
    with urllib.request.urlopen(sandbox.app_url(APP, "/api/tasks"), timeout=10) as res:
        assert res.status == 200 and json.loads(res.read())  # serving, with the tasks back
    # The rows written before the loss (a write taken after it may get the id of a lost one: the
    # sequence is WAL-logged ahead, the lost writes were not).
    present = present_ids(project, "title NOT LIKE 'after %'")
    missing = acknowledged - present
    assert set(before_backup) <= present, sorted(set(before_backup) - present)[:20]
    when = dict(writers.acknowledged_at)
    span = lost_at - min((when[i] for i in missing), default=lost_at)
    # Every write acknowledged more than the archive timeout and a push before the loss is back:
    # the RPO in seconds (issue 26), measured on acknowledged writes.
    assert span <= RPO_GOAL_S + RPO_MARGIN_S, (len(missing), span)
    print(f"\nrecover: RTO {rto:.1f} s (destroy -> serving, key authorization included); RPO {len(missing)} of "
          f"{len(acknowledged)} acknowledged writes, the last {span:.1f} s before the loss")
    # Until the data was complete every answer was 503 "recovering" (or none, before nginx ran);
    # from the first 2xx on, every read was served, each with the recovered data.
    recovered_max = max(acknowledged & present)
    answers = readers.answers
    served_from = next(n for n, (_, _, status, _) in enumerate(answers) if 200 <= status < 300)
    before, after = answers[:served_from], answers[served_from:]
    assert {status for _, _, status, _ in before} <= {0, 503}, sorted({(p, s) for _, p, s, _ in before})
    recovering = {path for _, path, status, body in before if status == 503 and "recovering" in body}
    assert recovering == {"/api/tasks", "/api/health", "/"}, sorted({(p, s, b[:80]) for _, p, s, b in before})
    assert [a[1:3] for a in after if not 200 <= a[2] < 300] == [], "not served all at once"
    for _, path, _, body in after:
        if path == "/api/tasks":
            assert max(task["id"] for task in json.loads(body)) >= recovered_max  # never the set's rows alone
    print(f"recover: {len(before)} reads answered 503 \"recovering\" or not at all, then {len(after)} served; "
          f"{len(during.refused)} writes refused, {len(during.acknowledged)} taken after")
    assert during.refused and {code for code, _ in during.refused} == {503}, during.refused[:5]
    assert all("recovering" in body for _, body in during.refused), during.refused[:5]
    taken = set(during.acknowledged)
    assert taken and taken <= present_ids(project, "title LIKE 'after %'")  # none lost
    assert min(taken) > recovered_max  # none taken before the data was complete
    assert (live / "cert.pem").read_bytes() == certificate  # the certificates came back
    assert not (sandbox.home / APP / ".recovering").exists()
    # This host's own point-in-time window starts once it serves: a full backup in its own
    # repository (the lost host's, off-site, do not count).
    local = subprocess.run(["docker", "exec", "-u", "postgres", service_container(project, "postgres"),
                            "pgbackrest", "info", "--repo=1", "--output=json"], capture_output=True, text=True)
    assert '"label"' in local.stdout, everything_said(out) + local.stdout + local.stderr
    for service in ("api", "worker"):  # the off-site secrets stay out of the stack
        env = subprocess.run(["docker", "compose", "-p", project, "exec", "-T", service, "env"], capture_output=True, text=True,
                             check=True).stdout
        assert "OFFSITE_" not in env and PASSWORD not in env
    assert PASSWORD not in "".join(p.read_text() for p in (sandbox.home / APP / "env").glob("*.env"))
    # The set it came from is kept: a backup's retention (one set kept here, one a day off-site)
    # removes neither copy of it, until the operator hands it back.
    assert re.search(rf"^  {set_name} .*KEPT", sandbox.fab("backup.offsite.list", env_file=initialised).stdout, re.M)
    sandbox.fab("backup", "--keep", "1", env_file=initialised)
    assert set_name in local_sets(sandbox) and local_sets(sandbox)[-1] != set_name
    listed = sandbox.fab("backup.offsite.list", env_file=initialised).stdout
    assert re.search(rf"^  {set_name} .*KEPT", listed, re.M), listed
    unkept = sandbox.fab("backup.offsite.unkeep", env_file=initialised)
    assert "handed back to retention" in unkept.stdout
    assert "KEPT" not in sandbox.fab("backup.offsite.list", env_file=initialised).stdout
    again = sandbox.fab("recover", "--from-offsite", "--skip-build", env_file=initialised, check=False)
    assert again.returncode == 5 and "already serves release" in again.stderr, everything_said(again)
    assert PASSWORD not in everything_said(out, again, init)


def test_a_corrupted_file_off_site_is_found_by_check(sandbox, initialised, sftp):
    assert "is sound" in sandbox.fab("backup.offsite.check", env_file=initialised).stdout
    packs = sorted((p for p in (sftp.home / "restic" / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim = packs[-1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    out = sandbox.fab("backup.offsite.check", env_file=initialised, check=False)
    assert out.returncode == 1 and "FAILED its check" in out.stderr, everything_said(out)
    assert PASSWORD not in everything_said(out)
