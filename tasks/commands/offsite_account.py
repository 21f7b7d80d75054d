"""`backup.offsite.account`: the SFTP-only (or append-only) account, on a server the operator owns,
that holds one VPS's off-site copies (tasks/programs/offsite-account.sh does the work there, as
root), and the settings the VPS then needs; `backup.offsite.prune`: retention of an append-only
repository, run there (tasks/programs/offsite-prune.sh), since the VPS cannot delete."""

from __future__ import annotations

import json
import re

from . import q
from .programs import program

ACCOUNT_PROGRAM = program("offsite-account.sh")
PRUNE_PROGRAM = program("offsite-prune.sh")
ACCOUNT_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# Absolute, plain characters only: the path reaches sshd's config, restic's and pgBackRest's URLs.
REPOSITORY_DIR = re.compile(r"/[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")
PUBLIC_KEY = re.compile(r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|"
                        r"sk-ssh-ed25519@openssh\.com) [A-Za-z0-9+/]+={0,3}( [!-~]{1,100})?")
EXIT_REASONS = {4: "sshd refused the account's configuration (it was removed again)",
                5: "sshd does not read /etc/ssh/sshd_config.d/*.conf, so the account would not "
                   "be SFTP-only",
                6: "the account exists and was not made by this task (it never takes one over)",
                7: "the directory exists and is not the account's (it never takes one over)",
                8: "apt-get could not install rclone and restic (an append-only account serves "
                   "the repository with rclone; retention runs restic there)"}
PRUNE_EXIT_REASONS = {3: "restic is not installed on the server (`backup.offsite.account "
                         "--append-only` installs it)",
                      4: "the directory is not a restic repository owned by the account (check "
                         "--user and OFFSITE_REPOSITORY's path)",
                      5: "the repository password did not reach the program"}
SET_NAME = re.compile(r"[0-9]{8}T[0-9]{6}Z")


def input_problems(account: str, directory: str, key: str) -> list[str]:
    """What is wrong with the task's input, each with its fix (empty when nothing is)."""
    problems = []
    if not ACCOUNT_NAME.fullmatch(account):
        problems.append(f"--user {account!r} is not a valid account name (lower-case letters, "
                        "digits, '-' and '_', starting with a letter or '_', at most 32)")
    if not REPOSITORY_DIR.fullmatch(directory) or "/../" in f"{directory}/" or directory == "/":
        problems.append(f"--path {directory!r} must be an absolute directory of letters, digits, "
                        "'.', '-' and '_' (not / and no '..'), like /srv/tasktracker-offsite")
    if not PUBLIC_KEY.fullmatch(key.strip()):
        problems.append("--key must be the VPS's public key line as `backup.offsite.init` prints "
                        "it (`ssh-ed25519 AAAA... tasktracker-offsite@HOST`), or a file holding it")
    return problems


def prepare(account: str, directory: str, key: str, append_only: bool = False) -> str:
    """Shell (as root on the server): the account, its directories, key and sshd block; with
    append_only, its forced command serves restic append-only instead of SFTP."""
    return (f"sh -c {q(ACCOUNT_PROGRAM)} offsite-account {q(account)} {q(directory)} "
            f"{q(key.strip())} {'append-only' if append_only else 'sftp'}")


def prune(account: str, directory: str, project: str, keep: tuple[int, int, int], *,
          dry_run: bool = False, unkeep: str = "") -> str:
    """Shell (as root on the server): restic's retention on the repository, as the account, with
    the VPS's policy; the password is the one line the program reads on stdin. dry_run: what would
    go, nothing removed; unkeep (a set or `all`): hand kept sets back to retention first."""
    action = ["unkeep", unkeep] if unkeep else ["dry-run" if dry_run else "prune"]
    return (f"sh -c {q(PRUNE_PROGRAM)} offsite-prune {q(account)} {q(directory)} {q(project)} "
            f"{' '.join(str(n) for n in keep)} {' '.join(q(a) for a in action)}")


def parse_pruned(output: str) -> list[str]:
    """The sets left in the repository, oldest first, from the program's `SNAPSHOTS [...]` line
    (restic may say on stdout too that it read the password from stdin)."""
    texts = [line[len("SNAPSHOTS "):] for line in output.splitlines()
             if line.startswith("SNAPSHOTS [")]
    try:
        snapshots = json.loads(texts[-1] if texts else "[]")
    except ValueError:
        return []
    return sorted(tag[4:] for snap in snapshots if isinstance(snap, dict)
                  for tag in snap.get("tags") or [] if tag.startswith("set="))


def parse(output: str) -> tuple[list[str], str]:
    """(what changed, the server's host key fingerprint) from what the program printed."""
    changes = [line[len("CHANGED "):] for line in output.splitlines()
               if line.startswith("CHANGED ")]
    fingerprints = [line.split()[1] for line in output.splitlines()
                    if line.startswith("FINGERPRINT ") and len(line.split()) == 2]
    return changes, (fingerprints[-1] if fingerprints else "")


def settings_lines(account: str, server: str, port: int, directory: str,
                   fingerprint: str, append_only: bool = False) -> list[str]:
    """The VPS's settings for this account (its settings file, then `backup.offsite.init`): the
    repository in restic's short form, or its URL form for an SSH port other than 22; and
    OFFSITE_APPEND_ONLY=true for an append-only account."""
    if ":" in server:  # an IPv6 address: the URL form, bracketed
        server = f"[{server.strip('[]')}]"
    repository = (f"sftp:{account}@{server}:{directory}" if port == 22 and "[" not in server
                  else f"sftp://{account}@{server}:{port}/{directory}")
    return [f"OFFSITE_REPOSITORY={repository}", f"OFFSITE_HOST_KEY={fingerprint}",
            *(["OFFSITE_APPEND_ONLY=true"] if append_only else [])]
