"""`backup.offsite.account` without a server: the input check, the command and the parsers as
tables (tests/test_e2e_day0.py runs it on a VM-like host and backs up into the account)."""

import pytest

from tasks.commands import offsite, offsite_account


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
    assert command.endswith(f" offsite-account tt /srv/tt '{ACCOUNT_KEY}'")
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
