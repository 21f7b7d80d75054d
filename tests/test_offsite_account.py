"""`backup.offsite.account` without a server: the input check, the command and the parsers as
tables (tests/test_e2e_day0.py runs it on a VM-like host and backs up into the account)."""

import pytest
from invoke import Config, Context, Exit

import tasks.offsite as offsite_tasks
from tasks.commands import offsite, offsite_account, pitr_offsite
from tasks.exits import ExitCode
from tasks.settings import Settings, SettingsError
from tests.test_executors import FakeConnection, ok


REQUIRED = {"POSTGRES_PASSWORD": "pg-secret", "NATS_PASSWORD": "nats-secret", "TELEGRAM_BOT_TOKEN": "123:tok",
            "OPENAI_API_KEY": "sk-x", "APP_URL": "https://t.example.com", "WEBAPP_URL": "https://t.example.com",
            "DOMAIN": "t.example.com"}
ACCOUNT_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHcxmRr0j4Uq2ydTHHgvhaXlxUZgwAtS3O7iBmEZ7Hbf tasktracker-offsite@vps"


@pytest.mark.parametrize("account, directory, key, wrong", [
    ("tasktracker-offsite", "/srv/tasktracker-offsite", ACCOUNT_KEY, []),
    ("tasktracker-offsite", "/srv/tt", ACCOUNT_KEY.rsplit(" ", 1)[0], []),  # no comment
    ("Bad User", "/srv/tt", ACCOUNT_KEY, ["--user"]),
    ("tt", "srv/tt", ACCOUNT_KEY, ["--path"]),
    ("tt", "/", ACCOUNT_KEY, ["--path"]),
    ("tt", "/srv/../etc", ACCOUNT_KEY, ["--path"]),
    ("tt", "/srv/t t", ACCOUNT_KEY, ["--path"]),
    ("tt", "/srv/tt", "ssh-ed25519 AAAA; rm -rf /", ["--key"]),
    ("tt", "/srv/tt", "", ["--key"]),
    ("-o", "/srv/$(id)", "not a key", ["--user", "--path", "--key"]),
])
def test_offsite_account_input(account, directory, key, wrong):
    problems = offsite_account.input_problems(account, directory, key)
    assert [p.split()[0] for p in problems] == wrong


def test_offsite_account_command_and_output():
    command = offsite_account.prepare("tt", "/srv/tt", ACCOUNT_KEY + "\n")
    assert command.startswith("sh -c '#!/bin/sh\n")
    assert command.endswith(f" offsite-account tt /srv/tt '{ACCOUNT_KEY}' sftp")
    assert offsite_account.prepare("tt", "/srv/tt", ACCOUNT_KEY, append_only=True).endswith(
        f" offsite-account tt /srv/tt '{ACCOUNT_KEY}' append-only")
    out = ("CHANGED account tt (system user, no shell)\nCHANGED directory /srv/tt\n"
           "FINGERPRINT SHA256:abcDEF0123\n")
    assert offsite_account.parse(out) == (["account tt (system user, no shell)", "directory /srv/tt"],
                                          "SHA256:abcDEF0123")
    assert offsite_account.parse("") == ([], "")
    assert offsite_account.settings_lines("tt", "backup.example.net", 22, "/srv/tt", "SHA256:x") == [
        "OFFSITE_REPOSITORY=sftp:tt@backup.example.net:/srv/tt", "OFFSITE_HOST_KEY=SHA256:x"]
    repository = offsite_account.settings_lines("tt", "10.0.0.5", 2222, "/srv/tt", "SHA256:x")[0]
    assert repository == "OFFSITE_REPOSITORY=sftp://tt@10.0.0.5:2222//srv/tt"
    assert offsite_account.settings_lines("tt", "2001:db8::5", 22, "/srv/tt", "SHA256:x")[0] == (
        "OFFSITE_REPOSITORY=sftp://tt@[2001:db8::5]:22//srv/tt")
    # what the VPS's settings parse back to: the same account, server, port and directory
    value = repository.split("=", 1)[1]
    assert offsite.sftp_target(value) == ("tt", "10.0.0.5", 2222) and offsite.sftp_path(value) == "/srv/tt"


def test_append_only_settings_name_the_mode_and_round_trip():
    pin = "SHA256:" + "A" * 43
    lines = offsite_account.settings_lines("tt", "backup.example.net", 22, "/srv/tt", pin, append_only=True)
    assert lines == ["OFFSITE_REPOSITORY=sftp:tt@backup.example.net:/srv/tt", f"OFFSITE_HOST_KEY={pin}",
                     "OFFSITE_APPEND_ONLY=true"]
    s = Settings.load(env_file="/nonexistent", environ={**REQUIRED, **dict(line.split("=", 1) for line in lines),
                                                        "OFFSITE_PASSWORD": "pw-secret-123"})
    assert s.offsite_append_only is True and offsite.sftp_path(s.offsite_repository) == "/srv/tt"
    assert Settings.load(env_file="/nonexistent", environ=REQUIRED).offsite_append_only is False


@pytest.mark.parametrize("overrides, problem", [
    ({"OFFSITE_APPEND_ONLY": "maybe"}, "OFFSITE_APPEND_ONLY must be true or false"),
    ({"OFFSITE_APPEND_ONLY": "true", "OFFSITE_REPOSITORY": "s3:https://s3.example.com/b/tt",
      "OFFSITE_AWS_ACCESS_KEY_ID": "AK", "OFFSITE_AWS_SECRET_ACCESS_KEY": "SK"},
     "OFFSITE_APPEND_ONLY=true needs an SFTP server's account made by `backup.offsite.account --append-only`"),
])
def test_append_only_settings_are_checked(overrides, problem):
    environ = {**REQUIRED, "OFFSITE_REPOSITORY": "sftp:tt@h:/srv/tt", "OFFSITE_PASSWORD": "pw-secret-123", **overrides}
    with pytest.raises(SettingsError) as error:
        Settings.load(env_file="/nonexistent", environ=environ)
    assert problem in str(error.value)


def test_an_append_only_conf_reaches_the_account_through_rclone_over_ssh():
    conf = offsite.conf_text(repository="sftp://tt@10.0.0.5:2222//srv/tt", password="pw", aws_access_key_id="",
                             aws_secret_access_key="", keep=(7, 4, 6), home="/home/deploy", append_only=True)
    ssh = ("'ssh -i /home/deploy/.ssh/tasktracker-offsite -o IdentitiesOnly=yes -o BatchMode=yes "
           "-o StrictHostKeyChecking=yes -o ConnectTimeout=15 -o ServerAliveInterval=15 -o ServerAliveCountMax=4 "
           "-p 2222 tt@10.0.0.5'")
    assert conf.splitlines() == ["RESTIC_REPOSITORY=rclone:/srv/tt", "RESTIC_PASSWORD=pw", "KEEP_DAILY=7",
                                 "KEEP_WEEKLY=4", "KEEP_MONTHLY=6", f"RCLONE_COMMAND={ssh}", "APPEND_ONLY=1"]
    plain = offsite.conf_text(repository="sftp://tt@10.0.0.5:2222//srv/tt", password="pw", aws_access_key_id="",
                              aws_secret_access_key="", keep=(7, 4, 6), home="/home/deploy")
    assert "RESTIC_REPOSITORY=sftp://tt@10.0.0.5:2222//srv/tt" in plain and f"SFTP_COMMAND={ssh[:-1]} -s sftp'" in plain
    assert "RCLONE" not in plain and "APPEND_ONLY" not in plain
    # no WAL archive off-site on an append-only account: pgBackRest deletes and renames
    assert pitr_offsite.offsite_repo_path("sftp:tt@h:/srv/tt") == "/srv/tt-pgbackrest"
    assert pitr_offsite.offsite_repo_path("sftp:tt@h:/srv/tt", append_only=True) == ""


@pytest.mark.parametrize("kwargs, tail", [
    ({}, " offsite-prune tt /srv/tt tasktracker 7 4 6 prune"),
    ({"dry_run": True}, " offsite-prune tt /srv/tt tasktracker 7 4 6 dry-run"),
    ({"unkeep": "20261126T020000Z"}, " offsite-prune tt /srv/tt tasktracker 7 4 6 unkeep 20261126T020000Z"),
    ({"unkeep": "all"}, " offsite-prune tt /srv/tt tasktracker 7 4 6 unkeep all"),
])
def test_prune_command(kwargs, tail):
    command = offsite_account.prune("tt", "/srv/tt", "tasktracker", (7, 4, 6), **kwargs)
    assert command.startswith("sh -c '#!/bin/sh\n") and command.endswith(tail)
    assert "password" not in tail  # the password travels on stdin only


@pytest.mark.parametrize("output, left", [
    ("", []),
    ("removed snapshot 1a2b\nSNAPSHOTS not json\n", []),
    ('Applying Policy\nSNAPSHOTS reading repository password from stdin\nSNAPSHOTS [{"tags": ["tasktracker", "set=20261126T020000Z"]}, '
     '{"tags": ["set=20261125T020000Z", "keep"]}, {"tags": null}]\n', ["20261125T020000Z", "20261126T020000Z"]),
])
def test_parse_pruned(output, left):
    assert offsite_account.parse_pruned(output) == left


# --- `backup.offsite.prune`'s executor, on a fake connection ----------------------------------

def prune_context(tmp_path, **settings):
    env = tmp_path / "vps.env"
    env.write_text("".join(f"{k}={v}\n" for k, v in {**REQUIRED, "OFFSITE_REPOSITORY": "sftp:tt@h:/srv/tt",
                                                      "OFFSITE_PASSWORD": "pw-offsite-Secret-9",
                                                      "OFFSITE_APPEND_ONLY": "true", **settings}.items()))
    return Context(Config(overrides={"tasktracker": {"env_file": str(env)}}))


def test_prune_sends_the_password_on_stdin_only_and_says_what_is_left(tmp_path, monkeypatch, capsys):
    conn = FakeConnection().on("id -u", ok("0\n")).on("offsite-prune", ok(
        "reading repository password from stdin\nApplying Policy: keep 1 daily\nremove 1 snapshots\n"
        'SNAPSHOTS [{"tags": ["tasktracker", "set=20261126T020000Z"]}]\n'))
    monkeypatch.setattr(offsite_tasks.remote, "require_host", lambda c: c)
    monkeypatch.setattr(offsite_tasks.remote, "connect", lambda c: conn)
    offsite_tasks.prune.body(prune_context(tmp_path, OFFSITE_KEEP_DAILY=1), user="tt")
    command, kwargs = conn.calls[-1]
    assert command.endswith(" offsite-prune tt /srv/tt tasktracker 1 4 6 prune")
    assert kwargs["in_stream"].getvalue() == "pw-offsite-Secret-9\n"
    assert all("pw-offsite-Secret-9" not in c for c in conn.commands)
    out = capsys.readouterr()
    assert "remove 1 snapshots" in out.out and "The repository holds 1 set(s) of tasktracker, 20261126T020000Z" in out.out
    assert "pw-offsite-Secret-9" not in out.out + out.err and "reading repository password" not in out.out


@pytest.mark.parametrize("settings, flags, problem", [
    ({}, {"unkeep": "yesterday"}, "--unkeep 'yesterday' is not a set's name"),
    ({}, {"user": "Bad User"}, "--user 'Bad User' is not a valid account name"),
    ({"OFFSITE_REPOSITORY": "s3:https://s3.example.com/b/tt", "OFFSITE_APPEND_ONLY": "false",
      "OFFSITE_AWS_ACCESS_KEY_ID": "AK", "OFFSITE_AWS_SECRET_ACCESS_KEY": "SK"}, {}, "does not name an SFTP account's directory"),
])
def test_prune_refuses_bad_input_before_connecting(tmp_path, monkeypatch, settings, flags, problem):
    monkeypatch.setattr(offsite_tasks.remote, "connect", lambda c: pytest.fail("connected"))
    monkeypatch.setattr(offsite_tasks.remote, "require_host", lambda c: c)
    with pytest.raises(Exit) as refused:
        offsite_tasks.prune.body(prune_context(tmp_path, **settings), **flags)
    assert refused.value.code == ExitCode.USAGE and problem in str(refused.value.message)
    assert "Nothing was changed" in str(refused.value.message)


def test_unkeep_on_an_append_only_repository_names_the_servers_task_before_connecting(tmp_path, monkeypatch):
    monkeypatch.setattr(offsite_tasks, "open_host", lambda *a, **k: pytest.fail("connected"))
    with pytest.raises(Exit) as refused:
        offsite_tasks.unkeep.body(prune_context(tmp_path), name="20261126T020000Z")
    assert refused.value.code == ExitCode.USAGE
    assert "`fab -H SERVER backup.offsite.prune --unkeep 20261126T020000Z`" in str(refused.value.message)
