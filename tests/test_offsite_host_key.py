"""The SFTP server's host key is pinned, never trusted on first use (issue 24): OFFSITE_HOST_KEY's
check, the builder and parser as tables, the messages, and tasks/programs/offsite-host-key.sh run
for real against an sshd on this machine (integration tier)."""

import os
import subprocess
from pathlib import Path

import pytest

from tasks.commands import offsite
from tasks.settings import Settings, SettingsError
from tests.support import SftpServer, free_port

REQUIRED = {"POSTGRES_PASSWORD": "pg-secret", "NATS_PASSWORD": "nats-secret", "TELEGRAM_BOT_TOKEN": "123:tok",
            "OPENAI_API_KEY": "sk-x", "APP_URL": "https://t.example.com", "WEBAPP_URL": "https://t.example.com",
            "DOMAIN": "t.example.com", "OFFSITE_REPOSITORY": "sftp:b@h:/r", "OFFSITE_PASSWORD": "pw-secret-123"}
GOOD = "SHA256:" + "aB3+/" * 8 + "xyz"  # 43 characters after the prefix


@pytest.mark.parametrize("value, fine", [
    ("", True), (GOOD, True),
    ("SHA256:short", False), ("MD5:aa:bb", False), (GOOD + "=", False), ("ssh-ed25519 AAAAC3Nza", False),
])
def test_offsite_host_key_must_be_a_sha256_fingerprint(value, fine):
    environ = {**REQUIRED, "OFFSITE_HOST_KEY": value}
    if fine:
        assert Settings.load(env_file="/nonexistent", environ=environ).offsite_host_key == value
    else:
        with pytest.raises(SettingsError, match="OFFSITE_HOST_KEY .* is not a host key fingerprint"):
            Settings.load(env_file="/nonexistent", environ=environ)


@pytest.mark.parametrize("repository, assignments", [
    ("sftp:backup@backup.example.com:/srv/r", ["host=backup.example.com", "port=22", "name=backup.example.com"]),
    ("sftp://b@10.0.0.5:2222//srv/r", ["host=10.0.0.5", "port=2222", "name='[10.0.0.5]:2222'"]),
])
def test_pin_host_key_fills_in_the_server_and_the_pin_quoted(repository, assignments):
    script = offsite.pin_host_key(repository, GOOD)
    for line in [*assignments, f"pin={GOOD}"]:
        assert f"\n{line}\n" in script
    assert "@HOST@" not in script and "@PIN@" not in script
    assert "\npin=''\n" in offsite.pin_host_key(repository, "")


def test_parse_host_keys():
    out = "@@offered SHA256:abc (ED25519)\n@@offered SHA256:def (RSA)\nnoise\n@@pinned SHA256:abc\n"
    assert offsite.parse_host_keys(out) == (["SHA256:abc (ED25519)", "SHA256:def (RSA)"], "SHA256:abc")
    assert offsite.parse_host_keys("") == ([], "")


@pytest.mark.parametrize("exited, says", [
    (3, "did not answer vps (ssh-keyscan, 15 s)"),
    (4, "OFFSITE_HOST_KEY is not set, and an SFTP server's key is never trusted on first use. "
        "h:2222 offers SHA256:abc (ED25519)"),
    (5, f"offers SHA256:abc (ED25519), and none is OFFSITE_HOST_KEY ({GOOD})"),
])
def test_host_key_messages_say_what_and_the_fix_in_one_paragraph(exited, says):
    text = offsite.host_key_message("vps", "sftp://b@h:2222//r", GOOD if exited == 5 else "",
                                    ["SHA256:abc (ED25519)"], exited)
    assert says in text and text.endswith("Nothing was changed on the host or off-site.")
    assert "\n" not in text and "backup.offsite.init" in text


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    sftp = SftpServer(tmp_path_factory.mktemp("pin")).start()
    yield sftp
    sftp.remove()


def run_pin(server, home: Path, pin: str) -> subprocess.CompletedProcess:
    script = offsite.pin_host_key(server.repository, pin)
    return subprocess.run(["sh", "-c", script], env={**os.environ, "HOME": str(home)}, capture_output=True, text=True)


@pytest.mark.integration
def test_the_program_pins_only_the_named_key_and_otherwise_changes_nothing(server, tmp_path):
    known = tmp_path / ".ssh" / "known_hosts"
    unset = run_pin(server, tmp_path, "")
    assert unset.returncode == 4 and offsite.parse_host_keys(unset.stdout) == ([f"{server.fingerprint} (ED25519)"], "")
    assert not known.exists()
    wrong = run_pin(server, tmp_path, "SHA256:" + "A" * 43)
    assert wrong.returncode == 5 and not known.exists()
    known.parent.mkdir(mode=0o700)
    known.write_text(f"[{server.address}]:{server.port} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOldKeyOfAnOldServer\n"
                     "other.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherHostsKeyStays\n")
    pinned = run_pin(server, tmp_path, server.fingerprint)
    assert pinned.returncode == 0 and offsite.parse_host_keys(pinned.stdout)[1] == server.fingerprint, pinned
    lines = known.read_text().splitlines()
    assert "other.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOtherHostsKeyStays" in lines
    assert not any("OldKeyOfAnOldServer" in line for line in lines)
    assert [line.split()[0] for line in lines if "other.example.com" not in line] == [f"[{server.address}]:{server.port}"]
    assert oct(known.stat().st_mode & 0o777) == "0o600"
    # ssh now accepts exactly that key for the server: a strict connection gets past host-key checking.
    check = subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o",
                            f"UserKnownHostsFile={known}", "-p", str(server.port), f"nobody@{server.address}", "true"],
                           capture_output=True, text=True, timeout=30)
    assert "Permission denied" in check.stderr and "Host key verification failed" not in check.stderr, check.stderr


@pytest.mark.integration
def test_a_server_that_does_not_answer_is_exit_3(tmp_path):
    script = offsite.pin_host_key(f"sftp://b@127.0.0.1:{free_port()}//r", GOOD)
    out = subprocess.run(["sh", "-c", script], env={**os.environ, "HOME": str(tmp_path)}, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 3 and not (tmp_path / ".ssh").exists()
