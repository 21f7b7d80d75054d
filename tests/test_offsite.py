"""Off-site copies without a host: the builders and parsers as tables, and the host program
(`tasktracker-offsite`) run for real with restic against a local repository: push, retention,
list, fetch on a "new host", a corrupted file found by `check`, a failed push that keeps the set."""

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tasks.commands import offsite, offsite_account
from tasks.commands.context import HostContext
from tasks.settings import Settings, SettingsError
from tests.support import restic_rest_status

# pytest-xdist: its restic repository template is made once, on one worker.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("offsite")]

ABS = HostContext("/home/deploy/tasktracker", "tasktracker")
REQUIRED = {"POSTGRES_PASSWORD": "pg-secret", "NATS_PASSWORD": "nats-secret", "TELEGRAM_BOT_TOKEN": "123:tok",
            "OPENAI_API_KEY": "sk-x", "APP_URL": "https://t.example.com", "WEBAPP_URL": "https://t.example.com",
            "DOMAIN": "t.example.com"}


@pytest.mark.parametrize("repository, target", [
    ("sftp:backup@backup.example.com:/srv/restic/tt", ("backup", "backup.example.com", 22)),
    ("sftp:backup.example.com:/srv/restic", ("", "backup.example.com", 22)),
    ("sftp://backup@10.0.0.5:2222//srv/restic/tt", ("backup", "10.0.0.5", 2222)),
    ("s3:https://s3.example.com/bucket/tt", None),
    ("/mnt/usb/restic", None),
])
def test_sftp_target(repository, target):
    assert offsite.sftp_target(repository) == target


def test_sftp_command_uses_the_hosts_own_key_and_never_prompts():
    assert offsite.sftp_command("sftp://backup@10.0.0.5:2222//srv/r", "/home/deploy") == (
        "ssh -i /home/deploy/.ssh/tasktracker-offsite -o IdentitiesOnly=yes -o BatchMode=yes "
        "-o StrictHostKeyChecking=yes -o ConnectTimeout=15 -o ServerAliveInterval=15 -o ServerAliveCountMax=4 "
        "-p 2222 backup@10.0.0.5 -s sftp")
    assert offsite.sftp_command("s3:https://s3.example.com/b", "/home/deploy") == ""


def test_conf_text_quotes_values_and_leaves_out_empty_ones():
    text = offsite.conf_text(repository="s3:https://s3.example.com/b", password="pa ss'word", aws_access_key_id="AK",
                             aws_secret_access_key="SK$x", keep=(7, 4, 6), home="")
    assert text.splitlines() == ["RESTIC_REPOSITORY=s3:https://s3.example.com/b", "RESTIC_PASSWORD='pa ss'\"'\"'word'",
                                 "AWS_ACCESS_KEY_ID=AK", "AWS_SECRET_ACCESS_KEY='SK$x'", "KEEP_DAILY=7", "KEEP_WEEKLY=4",
                                 "KEEP_MONTHLY=6"]
    sourced = subprocess.run(["bash", "-c", 'set -a; . /dev/stdin; set +a; printf "%s|%s" "$RESTIC_PASSWORD" "$AWS_SECRET_ACCESS_KEY"'],
                             input=text, capture_output=True, text=True, check=True).stdout
    assert sourced == "pa ss'word|SK$x"


def test_cron_lines_have_no_percent_sign_and_alert_on_failure():
    lines = offsite.cron_lines(ABS, "02:30")
    assert lines["drill"].startswith("30 3 1 * * /home/deploy/tasktracker/bin/tasktracker-offsite /home/deploy/tasktracker tasktracker drill")
    assert lines["check"].startswith("30 4 * * 0 /home/deploy/tasktracker/bin/tasktracker-offsite /home/deploy/tasktracker tasktracker check 1/10")
    for kind, line in lines.items():
        assert "%" not in line and line.endswith(f"# tasktracker-{kind}:tasktracker") and "tasktracker-notify" in line
    assert offsite.cron_lines(ABS, "23:15")["check"].startswith("15 1 * * 0 ")


RESTIC_SNAPSHOTS = ('[{"time":"2026-11-26T04:31:02.1+00:00","tree":"ab","paths":["/home/d/tasktracker/backups/20261126T043100Z"],'
                    '"hostname":"tasktracker","username":"d","tags":["tasktracker","set=20261126T043100Z"],"id":"0123456789abcdef",'
                    '"short_id":"01234567"},{"time":"2026-11-25T02:00:09+00:00","paths":["/x"],"hostname":"tasktracker",'
                    '"tags":["set=20261125T020000Z","tasktracker"],"id":"fedcba9876543210","short_id":"fedcba98"},'
                    '{"time":"2026-11-25T02:00:09+00:00","paths":["/y"],"hostname":"tasktracker","tags":["other"],"id":"x"}]')


def test_parse_snapshots_orders_sets_and_skips_foreign_snapshots():
    assert offsite.parse_snapshots(RESTIC_SNAPSHOTS) == [
        {"set": "20261125T020000Z", "time": "2026-11-25T02:00:09+00:00", "id": "fedcba98", "kept": False},
        {"set": "20261126T043100Z", "time": "2026-11-26T04:31:02.1+00:00", "id": "01234567", "kept": False}]
    assert offsite.parse_snapshots("") == [] and offsite.parse_snapshots("Fatal: unable to open") == []


def test_parse_drill_and_last_push_and_locations():
    assert offsite.parse_drill("[offsite] restoring x\ncount alembic_version=1\ncount tasks=42\nOFFSITE DRILL OK 20261126T043100Z\n") == (
        "20261126T043100Z", {"alembic_version": 1, "tasks": 42})
    log = ['{"time": "t1", "set": "A", "result": "ok"}', '{"time": "t1", "set": "A", "result": "offsite-failed"}',
           '{"time": "t2", "set": "B", "result": "ok"}', "not json"]
    assert offsite.last_push(log)["set"] == "A" and offsite.last_push(log[:1]) is None
    assert offsite.locations(["A", "B"], None) == {"A": "host", "B": "host"}
    assert offsite.locations(["B", "C"], ["A", "B"]) == {"A": "off-site", "B": "both", "C": "host"}


@pytest.mark.parametrize("overrides, problem", [
    ({"OFFSITE_REPOSITORY": "ftp://x/y", "OFFSITE_PASSWORD": "pw-secret-123"}, "OFFSITE_REPOSITORY 'ftp://x/y' is not a restic repository"),
    ({"OFFSITE_REPOSITORY": "sftp:b@h:/r"}, "OFFSITE_PASSWORD is missing or empty"),
    ({"OFFSITE_REPOSITORY": "s3:https://s3.example.com/b", "OFFSITE_PASSWORD": "pw-secret-123"}, "OFFSITE_AWS_ACCESS_KEY_ID and"),
    ({"OFFSITE_REPOSITORY": "sftp:b@h:/r", "OFFSITE_PASSWORD": "pw-secret-123", "OFFSITE_KEEP_DAILY": "0"}, "OFFSITE_KEEP_DAILY must be"),
])
def test_offsite_settings_are_validated(overrides, problem):
    with pytest.raises(SettingsError) as error:
        Settings.load(env_file="/nonexistent", environ={**REQUIRED, **overrides})
    assert problem in str(error.value)
    assert overrides.get("OFFSITE_PASSWORD", "\0") not in str(error.value)


def test_offsite_settings_accept_sftp_and_keep_the_password_secret():
    s = Settings.load(env_file="/nonexistent", environ={**REQUIRED, "OFFSITE_REPOSITORY": "sftp:b@h:/r", "OFFSITE_PASSWORD": "hunter22"})
    assert s.offsite_repository == "sftp:b@h:/r" and "hunter22" not in repr(s) and "hunter22" in s.secret_values()


# --- the host program, with restic and a local repository ---------------------------------------

needs_restic = pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed (scripts/test installs it)")


def make_app(root: Path, repository: Path, keep=(7, 4, 6)) -> Path:
    app = root / "app"
    (app / "bin").mkdir(parents=True)
    (app / "shared").mkdir()
    (app / "backups").mkdir()
    program = app / "bin" / offsite.SCRIPT_NAME
    program.write_text(offsite.OFFSITE_SCRIPT)
    program.chmod(0o700)
    (app / "shared" / "offsite.conf").write_text(offsite.conf_text(
        repository=str(repository), password="drill-secret", aws_access_key_id="", aws_secret_access_key="", keep=keep, home=""))
    return app


def make_set(app: Path, name: str, content: bytes) -> Path:
    d = app / "backups" / name
    d.mkdir()
    (d / "database.dump").write_bytes(content)
    (d / "rowcounts.txt").write_text("tasks=3\n")
    sums = "".join(f"{hashlib.sha256((d / f).read_bytes()).hexdigest()}  {f}\n" for f in ("database.dump", "rowcounts.txt"))
    (d / "SHA256SUMS").write_text(sums)
    (d / "manifest.json").write_text(json.dumps({"set": name, "verification": {"result": "ok"}}))
    return d


def program(app: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": str(app.parent)}
    return subprocess.run([str(app / "bin" / offsite.SCRIPT_NAME), str(app), "tt", *args], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.fixture(scope="session")
def initialised_repository(tmp_path_factory) -> Path:
    """A repository `init` made once (restic's key derivation costs seconds of CPU per `init`):
    tests that start from an initialised one copy it."""
    root = tmp_path_factory.mktemp("offsite-template")
    assert program(make_app(root, root / "repo"), "init").returncode == 0
    return root / "repo"


def initialised(app: Path, repo: Path, template: Path) -> None:
    shutil.copytree(template, repo)
    assert "repository exists" in program(app, "init").stdout


@needs_restic
def test_push_list_retention_and_fetch_on_a_new_host(tmp_path):
    repo = tmp_path / "repo"
    app = make_app(tmp_path / "a", repo, keep=(1, 1, 1))
    assert "repository created" in program(app, "init").stdout
    assert "repository exists" in program(app, "init").stdout
    for n, name in enumerate(("20261124T020000Z", "20261125T020000Z", "20261126T020000Z")):
        make_set(app, name, os.urandom(2048) + bytes([n]))
        result = program(app, "push", name)
        assert result.returncode == 0 and f"OFFSITE OK {name}" in result.stdout, result.stderr
        assert "drill-secret" not in result.stdout + result.stderr
    # one schedule for the app: all three were made today, so keep-daily 1 keeps the newest only
    rows = offsite.parse_snapshots(program(app, "list").stdout)
    assert [r["set"] for r in rows] == ["20261126T020000Z"]
    # a new host with only the settings: the set comes back byte for byte, checksums checked
    fresh = make_app(tmp_path / "b", repo)
    result = program(fresh, "fetch", "latest")
    assert result.returncode == 0 and "OFFSITE FETCHED 20261126T020000Z" in result.stdout, result.stderr
    for f in ("database.dump", "rowcounts.txt", "SHA256SUMS", "manifest.json"):
        assert (fresh / "backups" / "20261126T020000Z" / f).read_bytes() == (app / "backups" / "20261126T020000Z" / f).read_bytes()
    assert not list((fresh / "backups").glob(".offsite-*"))  # its scratch dir is gone
    assert program(app, "check").returncode == 0


@needs_restic
def test_a_corrupted_file_is_found_by_check(tmp_path, initialised_repository):
    repo = tmp_path / "repo"
    app = make_app(tmp_path, repo)
    initialised(app, repo, initialised_repository)
    make_set(app, "20261126T020000Z", os.urandom(4096))
    assert program(app, "push", "20261126T020000Z").returncode == 0
    pack = max((p for p in (repo / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    pack.chmod(0o600)
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pack.write_bytes(bytes(data))
    result = program(app, "check")
    assert result.returncode != 0 and "drill-secret" not in result.stdout + result.stderr


@needs_restic
def test_a_failed_push_keeps_the_set_and_says_so(tmp_path):
    app = make_app(tmp_path, tmp_path / "never-initialised")
    made = make_set(app, "20261126T020000Z", b"dump")
    result = program(app, "push", "20261126T020000Z")
    assert result.returncode == 1 and "OFFSITE PUSH FAILED for 20261126T020000Z (the set is kept on this host)" in result.stderr
    assert (made / "database.dump").read_bytes() == b"dump"
    bad = program(app, "push", "../../etc")
    assert bad.returncode == 2 and "no complete full set" in bad.stderr


def test_not_configured_host_is_told_what_to_run(tmp_path):
    app = make_app(tmp_path, tmp_path / "repo")
    (app / "shared" / "offsite.conf").unlink()
    result = program(app, "list")
    assert result.returncode == 2 and "run backup.offsite.init" in result.stderr


@needs_restic
def test_each_push_leaves_its_result_in_the_backup_log(tmp_path):
    app = make_app(tmp_path, tmp_path / "repo")
    make_set(app, "20261126T020000Z", b"dump")
    assert program(app, "push", "20261126T020000Z").returncode == 1  # no repository yet
    assert offsite.last_push((app / "backups" / "backup.log").read_text().splitlines())["result"] == "offsite-failed"
    assert program(app, "init").returncode == 0 and program(app, "push", "20261126T020000Z").returncode == 0
    assert offsite.last_push((app / "backups" / "backup.log").read_text().splitlines()) == {
        "time": offsite.last_push((app / "backups" / "backup.log").read_text().splitlines())["time"],
        "set": "20261126T020000Z", "result": "offsite-ok"}


def test_unpack_certificates_brings_back_tls_files_only(tmp_path):
    src = tmp_path / "old"
    for rel, text in (("env/r1.env", "SECRET=1"), ("shared/nginx/tls.conf", "ssl on;"),
                      ("shared/letsencrypt/live/t.example.com/cert.pem", "CERT"), ("shared/.env", "X=1")):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    app = tmp_path / "new"
    (app / "backups" / "S").mkdir(parents=True)
    subprocess.run(["tar", "-C", str(src), "-czf", str(app / "backups" / "S" / "app-files.tar.gz"), "env", "shared"], check=True)
    out = subprocess.run(["bash", "-c", offsite.unpack_certificates(HostContext(str(app), "tt"), "S")], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "certificates: 1"
    assert (app / "shared/letsencrypt/live/t.example.com/cert.pem").read_text() == "CERT"
    assert (app / "shared/nginx/tls.conf").read_text() == "ssl on;"
    assert not (app / "env").exists() and not (app / "shared/.env").exists()
    assert subprocess.run(["bash", "-c", offsite.unpack_certificates(HostContext(str(app), "tt"), "none")],
                          capture_output=True, text=True).returncode == 0  # a set without app files: nothing to do


@needs_restic
def test_retention_goes_by_when_a_set_was_made_not_when_it_was_copied(tmp_path, initialised_repository):
    app = make_app(tmp_path, tmp_path / "repo", keep=(1, 1, 1))
    initialised(app, tmp_path / "repo", initialised_repository)
    for name in ("20261126T020000Z", "20261126T010000Z"):  # the older set is copied last (a retried push)
        make_set(app, name, os.urandom(512))
        assert program(app, "push", name).returncode == 0
    assert [r["set"] for r in offsite.parse_snapshots(program(app, "list").stdout)] == ["20261126T020000Z"]


def test_a_password_in_a_rest_repository_url_is_redacted():
    s = Settings.load(env_file="/nonexistent", environ={**REQUIRED, "OFFSITE_REPOSITORY": "rest:https://bk:url-secret-9@r.example.com/tt",
                                                       "OFFSITE_PASSWORD": "pw-secret-123"})
    assert "url-secret-9" in s.secret_values()
    with pytest.raises(SettingsError) as error:
        Settings.load(env_file="/nonexistent", environ={**REQUIRED, "OFFSITE_REPOSITORY": "ftp://bk:url-secret-9@r.example.com/tt",
                                                        "OFFSITE_PASSWORD": "pw-secret-123"})
    assert "url-secret-9" not in str(error.value) and "ftp://USER:[REDACTED]@r.example.com/tt" in str(error.value)


@pytest.mark.parametrize("subset, ok", [("10%", True), ("100%", True), ("1/10", True), ("10/10", True), ("0%", False),
                                        ("101%", False), ("0/10", False), ("11/10", False), ("10", False), ("1/10; rm", False)])
def test_check_subset_is_one_restic_accepts(subset, ok):
    from tasks.offsite import valid_subset

    assert valid_subset(subset) is ok


@needs_restic
def test_fetch_latest_falls_back_to_the_next_set_when_the_newest_is_damaged(tmp_path, initialised_repository):
    repo = tmp_path / "repo"
    app = make_app(tmp_path / "a", repo)
    initialised(app, repo, initialised_repository)
    for name in ("20261124T020000Z", "20261125T020000Z"):
        make_set(app, name, os.urandom(8192))
        assert program(app, "push", name).returncode == 0
    # The newest push wrote its own pack files (blobs new in that run): damage them.
    newest = max((p for p in (repo / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_mtime_ns)
    newest.chmod(0o600)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    fresh = make_app(tmp_path / "b", repo)
    named = program(fresh, "fetch", "20261125T020000Z")
    assert named.returncode == 1 and "no set came back whole" in named.stderr
    latest = program(fresh, "fetch", "latest")
    assert latest.returncode == 0 and "OFFSITE FETCHED 20261124T020000Z" in latest.stdout, latest.stderr
    assert "20261125T020000Z" in latest.stderr  # the damaged newest set is named
    assert sorted(p.name for p in (fresh / "backups").iterdir() if p.name[:1].isdigit()) == ["20261124T020000Z"]


# What restic printed when the SFTP server refused the host's key (issue 26: the recovery host's
# first `backup.offsite.init` ended with this "Fatal" line).
REFUSED = ("subprocess ssh: tt-off-1a2b3c@172.17.0.1: Permission denied (publickey).\n"
           "Fatal: create repository at sftp:tt-off-1a2b3c@172.17.0.1:/home/tt-off-1a2b3c/restic "
           "failed: unable to start the sftp session, error: EOF\n")
PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample tasktracker-offsite@vps2"


@pytest.mark.parametrize("stderr, pubkey, says", [
    (REFUSED, PUBKEY, ["The SFTP server 172.17.0.1 does not accept vps2's key yet",
                       f"add the line\n  {PUBKEY}\nto ~tt-off-1a2b3c/.ssh/authorized_keys on "
                       "172.17.0.1", "run `fab -H vps2 backup.offsite.init` again",
                       "Nothing was lost or changed"]),
    (REFUSED, "", None),  # not SFTP: no key of ours to authorize
    ("Fatal: unable to open config file: stat /restic/config: no such file\n", PUBKEY, None),
])
def test_a_key_not_yet_authorized_says_so_in_one_paragraph(stderr, pubkey, says):
    from tasks.offsite import unauthorized_key_message

    repository = "sftp://tt-off-1a2b3c@172.17.0.1:22//home/tt-off-1a2b3c/restic"
    message = unauthorized_key_message("vps2", repository, pubkey, stderr)
    if says is None:
        assert message is None
        return
    for part in says:
        assert part in message, message
    assert "Fatal" not in message and "\n\n" not in message


@needs_restic
def test_a_kept_set_survives_retention_until_unkeep_and_describe_reads_it_in_place(tmp_path, initialised_repository):
    """Issue 26: the set a recovery came from is tagged `keep` (and marked on the host): retention
    (keep-daily 1, all made the same day) leaves it until `unkeep`; `describe` names the newest set
    and reads a set's manifest without restoring anything."""
    app = make_app(tmp_path, tmp_path / "repo", keep=(1, 1, 1))
    initialised(app, tmp_path / "repo", initialised_repository)
    old, new, newer = "20261126T010000Z", "20261126T020000Z", "20261126T030000Z"
    made = make_set(app, old, os.urandom(512))
    (made / "manifest.json").write_text(json.dumps({"set": old, "release": "20261125T173005Z-ab12cd3", "commit": "ab12cd3"}))
    assert program(app, "push", old).returncode == 0
    described = program(app, "describe", "latest")
    assert described.returncode == 0, described.stderr
    assert offsite.parse_described(described.stdout) == {"newest": old, "set": old, "release": "20261125T173005Z-ab12cd3",
                                                         "commit": "ab12cd3"}
    assert not list((app / "backups").glob(".offsite-*"))
    kept = program(app, "keep", old)
    assert kept.returncode == 0 and f"OFFSITE KEPT {old}" in kept.stdout, kept.stderr
    assert (app / "backups" / ".kept" / old).is_file()
    make_set(app, new, os.urandom(512))
    assert program(app, "push", new).returncode == 0
    rows = offsite.parse_snapshots(program(app, "list").stdout)
    assert [(r["set"], r["kept"]) for r in rows] == [(old, True), (new, False)]
    assert offsite.parse_described(program(app, "describe", old).stdout)["newest"] == new
    assert program(app, "describe", "20261101T000000Z").returncode == 2
    unkept = program(app, "unkeep", "all")
    assert unkept.returncode == 0 and not (app / "backups" / ".kept" / old).exists(), unkept.stderr
    make_set(app, newer, os.urandom(512))
    assert program(app, "push", newer).returncode == 0
    assert [r["set"] for r in offsite.parse_snapshots(program(app, "list").stdout)] == [newer]


# --- an append-only repository (backup.offsite.account --append-only), served as on the account --

needs_rclone = pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone is not installed (scripts/test installs it)")


def append_only_app(root: Path, repo: Path) -> tuple[Path, list[str]]:
    """A host whose offsite.conf reaches `repo` as an append-only account does (restic's rclone
    backend; here the account's forced command runs locally, without ssh), keep-daily 1."""
    serve = ["rclone", "serve", "restic", "--stdio", "--append-only", "--config", "/dev/null", "--log-level", "ERROR",
             str(repo)]
    program_file = root / "serve"
    program_file.parent.mkdir(parents=True, exist_ok=True)
    program_file.write_text(f"#!/bin/sh\nexec {' '.join(serve)}\n")
    program_file.chmod(0o700)
    app = make_app(root, repo, keep=(1, 1, 1))
    conf = app / "shared" / "offsite.conf"
    conf.write_text(conf.read_text().replace(f"RESTIC_REPOSITORY={repo}", "RESTIC_REPOSITORY=rclone:repo")
                    + f"RCLONE_COMMAND={program_file}\nAPPEND_ONLY=1\n")
    return app, serve


@needs_restic
@needs_rclone
def test_an_append_only_repository_takes_sets_and_gives_none_up(tmp_path, initialised_repository):
    """The host adds sets and deletes or overwrites none (the server answers 403); its push skips
    retention and its unkeep refuses; retention run on the server (offsite-prune.sh, as the
    account, the password on stdin) keeps the VPS's policy."""
    repo = tmp_path / "repo"
    shutil.copytree(initialised_repository, repo)
    app, serve = append_only_app(tmp_path / "a", repo)
    names = ("20261124T020000Z", "20261125T020000Z", "20261126T020000Z")
    for n, name in enumerate(names):
        make_set(app, name, os.urandom(2048) + bytes([n]))
        pushed = program(app, "push", name)
        assert pushed.returncode == 0 and f"OFFSITE OK {name}" in pushed.stdout, pushed.stderr
        assert "off-site retention runs on the off-site server" in pushed.stdout
    assert [r["set"] for r in offsite.parse_snapshots(program(app, "list").stdout)] == list(names)  # keep-daily 1 not applied
    kept = program(app, "keep", names[0])  # a request snapshot: the host cannot tag (rewrite) a set
    assert kept.returncode == 0 and f"OFFSITE KEPT {names[0]}" in kept.stdout, kept.stderr
    assert [r["set"] for r in offsite.parse_snapshots(program(app, "list").stdout)] == list(names)
    unkeep = program(app, "unkeep", "all")
    assert unkeep.returncode == 2 and "backup.offsite.prune --unkeep" in unkeep.stderr
    # what an intruder holding the host's credentials would try, at the protocol: each refused
    snapshot = sorted((repo / "snapshots").iterdir())[0]
    key = next((repo / "keys").iterdir())
    before = {p: p.read_bytes() for p in (snapshot, key, repo / "config")}
    assert restic_rest_status(serve, "DELETE", f"snapshots/{snapshot.name}") == 403
    assert restic_rest_status(serve, "POST", f"keys/{key.name}", b"overwritten") == 403
    assert restic_rest_status(serve, "POST", "config", b"overwritten") == 403
    assert restic_rest_status(serve, "DELETE", "config") == 403
    assert {p: p.read_bytes() for p in before} == before
    assert restic_rest_status(serve, "GET", "config") == 200  # the same bridge reads fine
    if os.geteuid() != 0:
        return  # the server's program runs restic as the account (runuser): root only
    prune = ["sh", "-c", offsite_account.PRUNE_PROGRAM, "offsite-prune", "root", str(repo), "tt", "1", "1", "1"]
    wrong = subprocess.run([*prune, "prune"], input="not-the-password\n", capture_output=True, text=True, timeout=120)
    assert wrong.returncode != 0 and len(list((repo / "snapshots").iterdir())) == 4, wrong  # 3 sets, 1 request
    dry = subprocess.run([*prune, "dry-run"], input="drill-secret\n", capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0 and f"KEEP REQUESTED {names[0]}" in dry.stdout, dry.stderr
    assert len(list((repo / "snapshots").iterdir())) == 4  # a dry run changes nothing
    done = subprocess.run([*prune, "prune"], input="drill-secret\n", capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # keep-daily 1 keeps the newest; the kept set stays; the request is gone
    assert offsite_account.parse_pruned(done.stdout) == [names[0], names[-1]] and "drill-secret" not in done.stdout + done.stderr
    rows = offsite.parse_snapshots(program(app, "list").stdout)
    assert [(r["set"], r["kept"]) for r in rows] == [(names[0], True), (names[-1], False)]
    assert len(list((repo / "snapshots").iterdir())) == 2
