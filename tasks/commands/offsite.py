"""Off-site copies of backup sets with restic, and the drill that proves them restorable.

The host runs `APP_DIR/bin/tasktracker-offsite`, written from OFFSITE_SCRIPT below, with its
settings in `APP_DIR/shared/offsite.conf` (0600, sent over SFTP: the repository password and S3
keys never reach a command line). The backup script calls `push` after a full set is complete
and verified, so the nightly cron job copies off-site with no laptop involved.

    tasktracker-offsite APP_DIR PROJECT  (then one of:)
      init              create the repository (idempotent)
      push SET          copy backups/SET, then apply retention
      list              snapshots of this app, as JSON
      check [SUBSET]    `restic check --read-data[-subset]`
      fetch SET|latest  restore a set into backups/ (checksums verified)
      describe SET|latest  the newest set's name; SET's manifest (nothing restored)
      keep SET...       retention never removes SET (tag `keep`; backups/.kept/SET; on an
                        append-only repository a request the server's prune applies)
      unkeep SET|all    hand kept sets back to retention
      drill             fetch the newest set into a scratch dir, restore its dump into a
                        scratch database, compare counts

Snapshots carry the host name PROJECT and the tags `tasktracker` and `set=<name>`; retention
(`forget --prune`) groups by host only, so every set of this app counts toward one
daily/weekly/monthly schedule and another app in the same repository is never touched. A set
tagged `keep` (what `recover` came from, and the newest set before the disaster) is never
removed by retention (`--keep-tag keep`) until `backup.offsite.unkeep`.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from urllib.parse import urlparse

from . import notify, q, sh
from .context import HostContext
from .programs import filled, program

SCRIPT_NAME = "tasktracker-offsite"
KEY_NAME = "tasktracker-offsite"  # ~/.ssh/<KEY_NAME>: the host's key for an SFTP repository
# restic's tag on a set retention must never remove (`forget --keep-tag keep`)
KEEP_TAG = "keep"
# the backup script's exit code: the set is made and kept, the off-site copy failed
PUSH_FAILED_EXIT = 3

OFFSITE_SCRIPT = program("offsite.sh")

HOST_KEY_FINGERPRINT = r"SHA256:[A-Za-z0-9+/]{43}"
REPOSITORY_SCHEMES = ("sftp:", "s3:", "rest:", "b2:", "azure:", "gs:", "swift:", "rclone:")


def script_path(ctx: HostContext) -> str:
    return f"{ctx.bin_dir}/{SCRIPT_NAME}"


def conf_path(ctx: HostContext) -> str:
    return f"{ctx.app_dir}/shared/offsite.conf"


def key_path() -> str:
    return f".ssh/{KEY_NAME}"  # relative to the deploy user's home, where every command starts


def sftp_target(repository: str) -> tuple[str, str, int] | None:
    """(user, host, port) of an `sftp:` repository, in either of restic's spellings:
    `sftp:user@host:/path` and `sftp://user@host:port//path`; None for other kinds."""
    if repository.startswith("sftp://"):
        url = urlparse(repository)
        return (url.username or "", url.hostname or "", url.port or 22) if url.hostname else None
    match = re.fullmatch(r"sftp:(?:([^@:/]+)@)?([^:/]+):(.+)", repository)
    return (match.group(1) or "", match.group(2), 22) if match else None


def sftp_path(repository: str) -> str:
    """The directory of an `sftp:` repository on the server, as written ('' for other kinds)."""
    if repository.startswith("sftp://"):
        path = urlparse(repository).path
        return path[1:] if path.startswith("//") else path
    match = re.fullmatch(r"sftp:(?:([^@:/]+)@)?([^:/]+):(.+)", repository)
    return match.group(3) if match else ""


def pin_host_key(repository: str, fingerprint: str) -> str:
    """Shell (tasks/programs/offsite-host-key.sh): the SFTP server's host keys and fingerprints
    (`@@offered`); the one whose fingerprint is `fingerprint` replaces what ~/.ssh/known_hosts
    said of the server (`@@pinned`). Exits 3 (no answer), 4 (no fingerprint given) or 5 (none
    matches) having changed nothing."""
    _, host, port = sftp_target(repository)
    values = {"@HOST@": host, "@PORT@": str(port), "@NAME@": known_host_name(repository),
              "@PIN@": fingerprint}
    return filled(program("offsite-host-key.sh"), {k: q(v) for k, v in values.items()})


def parse_host_keys(out: str) -> tuple[list[str], str]:
    """The keys `pin_host_key` saw the server offer ("SHA256:... (ED25519)") and the one pinned."""
    offered = [line.removeprefix("@@offered ").strip() for line in out.splitlines()
               if line.startswith("@@offered ")]
    pinned = next((line.removeprefix("@@pinned ").strip() for line in out.splitlines()
                   if line.startswith("@@pinned ")), "")
    return offered, pinned


def host_key_message(host_name: str, repository: str, pin: str, offered: list[str],
                     exited: int) -> str:
    """Why `init` stopped at the SFTP server's host key (pin_host_key's exit code), and the fix."""
    _, server, port = sftp_target(repository)
    keys = ", ".join(offered)
    check = ("Read the server's own fingerprint on it (`ssh-keygen -lf "
             "/etc/ssh/ssh_host_ed25519_key.pub`) or in its provider's panel")
    unchanged = " Nothing was changed on the host or off-site."
    if exited == 3:
        return (f"The SFTP server {server}:{port} did not answer {host_name} (ssh-keyscan, 15 s): "
                "check OFFSITE_REPOSITORY's host and port and that this host can reach it, then "
                f"run `fab -H {host_name} backup.offsite.init` again.{unchanged}")
    if exited == 4:
        return (f"OFFSITE_HOST_KEY is not set, and an SFTP server's key is never trusted on first "
                f"use. {server}:{port} offers {keys}. {check}, set OFFSITE_HOST_KEY to the "
                f"`SHA256:...` that matches, and run `fab -H {host_name} backup.offsite.init` "
                f"again.{unchanged}")
    return (f"The SFTP server {server}:{port} offers {keys or 'no key'}, and none is "
            f"OFFSITE_HOST_KEY ({pin}): the setting is wrong, the server was replaced, or "
            f"something between {host_name} and it answers in its place. {check}; if the "
            f"server really changed, set OFFSITE_HOST_KEY to its new key and run `fab -H "
            f"{host_name} backup.offsite.init` again."
            f"{unchanged}")


def known_host_name(repository: str) -> str:
    """How ssh's known_hosts names the SFTP server (`[host]:port` off port 22)."""
    _, host, port = sftp_target(repository)
    return host if port == 22 else f"[{host}]:{port}"


def ssh_command(repository: str, home: str) -> str:
    """ssh to the SFTP server as restic runs it: the host's own key, no prompts, only the server
    key `backup.offsite.init` pinned (OFFSITE_HOST_KEY) in ~/.ssh/known_hosts ('' for other
    kinds). An append-only account runs its forced `rclone serve restic` whatever is asked."""
    target = sftp_target(repository)
    if target is None:
        return ""
    user, host, port = target
    return shlex.join(["ssh", "-i", f"{home}/{key_path()}", "-o", "IdentitiesOnly=yes", "-o",
                       "BatchMode=yes",
                       "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=15",
                       "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-p",
                       str(port),
                       f"{user}@{host}" if user else host])


def sftp_command(repository: str, home: str) -> str:
    """The ssh command restic runs for an SFTP repository (`ssh_command` asking for sftp)."""
    ssh = ssh_command(repository, home)
    return f"{ssh} -s sftp" if ssh else ""


def conf_text(*, repository: str, password: str, aws_access_key_id: str, aws_secret_access_key: str,
              keep: tuple[int, int, int], home: str, append_only: bool = False) -> str:
    """offsite.conf: shell assignments the script sources (values quoted). An append-only account
    is restic's rclone backend over ssh (its forced command serves the repository, so the
    `rclone:` path is only a label); the script then leaves retention to the server."""
    sftp = "" if append_only else sftp_command(repository, home)
    rclone = ssh_command(repository, home) if append_only else ""
    if append_only:
        repository = f"rclone:{sftp_path(repository)}"
    values = {"RESTIC_REPOSITORY": repository, "RESTIC_PASSWORD": password,
              "AWS_ACCESS_KEY_ID": aws_access_key_id,
              "AWS_SECRET_ACCESS_KEY": aws_secret_access_key, "KEEP_DAILY": keep[0],
              "KEEP_WEEKLY": keep[1],
              "KEEP_MONTHLY": keep[2], "SFTP_COMMAND": sftp, "RCLONE_COMMAND": rclone,
              "APPEND_ONLY": "1" if append_only else ""}
    return "".join(f"{k}={q(str(v))}\n" for k, v in values.items() if v != "")


def prepare(ctx: HostContext, with_key: bool) -> str:
    """Make the 0700 program and 0600 conf's `.new` files the host layer writes into (over SFTP;
    `finish` moves them into place, so a half-sent file is never run or sourced); with_key: make
    the host's SFTP key if it has none and print its public key (`@@pubkey`); then the sha256 of
    the program and conf in place (`@@have`): only what differs is sent."""
    program, conf = script_path(ctx), conf_path(ctx)
    parts = [sh(["mkdir", "-p", ctx.bin_dir, f"{ctx.app_dir}/shared", ctx.backups_dir]),
             sh(["install", "-m", "700", "/dev/null", program + ".new"]),
             sh(["install", "-m", "600", "/dev/null", conf + ".new"])]
    if with_key:
        parts.append(f"mkdir -p -m 700 .ssh && {{ [ -f {q(key_path())} ] || ssh-keygen -q -t "
                     "ed25519 -N '' "
                     f"-C {q('tasktracker-offsite@' + ctx.project)} -f {q(key_path())} >/dev/null; "
                     f"}} && echo \"@@pubkey $(cat {q(key_path() + '.pub')})\"")
    parts.append(f"for f in {q(program)} {q(conf)}; do [ ! -f \"$f\" ] || echo \"@@have "
                 "$(sha256sum < \"$f\" | cut -d' ' -f1) $f\"; done")
    return " && ".join(parts)


def finish(ctx: HostContext, sent: list[str]) -> str:
    """Move the `.new` files that were sent into place; drop the others."""
    moves = [sh(["mv", "-f", path + ".new", path]) for path in sent]
    unused = [path + ".new" for path in (script_path(ctx), conf_path(ctx)) if path not in sent]
    return " && ".join(moves + ([sh(["rm", "-f", *unused])] if unused else []))


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def parse_prepare(output: str) -> tuple[str, dict[str, str]]:
    pubkey, have = "", {}
    for line in output.splitlines():
        if line.startswith("@@pubkey "):
            pubkey = line[len("@@pubkey "):].strip()
        elif line.startswith("@@have "):
            found, _, path = line[len("@@have "):].partition(" ")
            have[path] = found
    return pubkey, have


def run(ctx: HostContext, action: str, *args: str) -> list[str]:
    return [script_path(ctx), ctx.app_dir, ctx.project, action, *args]


def parse_snapshots(text: str) -> list[dict]:
    """`list` output: one row per snapshot, oldest first: set name, time, short id."""
    try:
        data = json.loads(text.strip() or "[]")
    except ValueError:
        return []
    rows = []
    for snap in data if isinstance(data, list) else []:
        names = [t[4:] for t in snap.get("tags") or [] if t.startswith("set=")]
        if names:
            rows.append({"set": names[0], "time": snap.get("time", ""),
                         "id": snap.get("short_id") or snap.get("id", "")[:8],
                         "kept": KEEP_TAG in (snap.get("tags") or [])})
    return sorted(rows, key=lambda row: row["set"])


def parse_drill(output: str) -> tuple[str, dict[str, int]]:
    """`drill` output: the set it restored and the row count of each table."""
    name, counts = "", {}
    for line in output.splitlines():
        if line.startswith("count ") and "=" in line:
            table, _, value = line[len("count "):].partition("=")
            counts[table] = int(value) if value.strip().isdigit() else 0
        elif line.startswith("OFFSITE DRILL OK "):
            name = line.split()[-1]
    return name, counts


def locations(host_sets: list[str], offsite_sets: list[str] | None) -> dict[str, str]:
    """Where each set exists: `host`, `off-site` or `both` (`offsite_sets` None: not configured)."""
    if offsite_sets is None:
        return {name: "host" for name in host_sets}
    names = sorted(set(host_sets) | set(offsite_sets))
    return {n: "both" if n in host_sets and n in offsite_sets else "host" if n in host_sets
            else "off-site" for n in names}


def cron_lines(ctx_abs: HostContext, at: str) -> dict[str, str]:
    """The off-site jobs `backup.schedule` installs next to the daily backup (which pushes each
    set itself): the restore drill monthly (the 1st, an hour after the backup) and a check reading
    a tenth of the data weekly (Sundays, two hours after). Each alerts when it fails."""
    hour, minute = (int(part) for part in at.split(":"))
    log = f"{ctx_abs.backups_dir}/offsite.log"
    jobs = {"drill": (f"{minute} {(hour + 1) % 24} 1 * *", "monthly restore drill",
                      run(ctx_abs, "drill")),
            # 1/10, not 10%: cron reads `%` as a newline
            "check": (f"{minute} {(hour + 2) % 24} * * 0", "weekly off-site check",
                      run(ctx_abs, "check", "1/10"))}
    return {kind: f"{when} {notify.on_failure(ctx_abs, what, sh(argv), log)} # "
                  f"tasktracker-{kind}:{ctx_abs.project}"
            for kind, (when, what, argv) in jobs.items()}


def last_push(log_lines: list[str]) -> dict | None:
    """The newest off-site entry (`offsite-ok` or `offsite-failed`) among backup.log's lines."""
    for line in reversed(log_lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and str(entry.get("result", "")).startswith("offsite-"):
            return entry
    return None


def parse_fetched(output: str) -> str:
    """The set `fetch` brought back ('' when it did not finish)."""
    names = [line.split()[-1] for line in output.splitlines()
             if line.startswith("OFFSITE FETCHED ")]
    return names[-1] if names else ""


def unpack_certificates(ctx: HostContext, set_name: str) -> str:
    """On a new host: the certificates and TLS settings of a set (shared/letsencrypt,
    shared/nginx) into APP_DIR, before the first deploy starts nginx. Each release's own
    settings (env/) are not restored: the deploy writes the release's from this checkout."""
    archive = q(f"{ctx.backups_dir}/{set_name}/app-files.tar.gz")
    return (f"if [ -f {archive} ]; then members=$(tar -tzf {archive} | grep -E "
            "'^shared/(letsencrypt|nginx)(/|$)'); "
            f"[ -z \"$members\" ] || printf '%s\\n' \"$members\" | tar -C {q(ctx.app_dir)} -xzf "
            f"{archive} --no-same-owner "
            "--no-recursion -T - && echo \"certificates: $(printf '%s\\n' \"$members\" | grep -c "
            "'^shared/letsencrypt/live/[^/]*/cert.pem$')\"; fi")


def recovering_marker(ctx: HostContext) -> str:
    """APP_DIR/.recovering holds the set a `recover` is bringing back, until it is done."""
    return q(ctx.recovering_file)


def mark_recovering(ctx: HostContext, set_name: str) -> str:
    return f"mkdir -p {q(ctx.app_dir)} && printf '%s\\n' {q(set_name)} > {recovering_marker(ctx)}"


def parse_described(output: str) -> dict[str, str]:
    """`describe` output: the newest set, the set described, and its release and commit (the
    manifest's, else the commit in the release's id); {} when it did not finish."""
    found: dict[str, str] = {}
    lines = output.splitlines()
    for n, line in enumerate(lines):
        if line.startswith("OFFSITE NEWEST "):
            found["newest"] = line.split()[-1]
        elif line.startswith("OFFSITE SET ") and n + 1 < len(lines):
            found["set"] = line.split()[-1]
            try:
                manifest = json.loads(lines[n + 1])
            except ValueError:
                manifest = {}
            release = str(manifest.get("release", "")) if isinstance(manifest, dict) else ""
            commit = str(manifest.get("commit", "")) if isinstance(manifest, dict) else ""
            found.update(release=release, commit=commit or commit_of_release(release))
    return found if {"newest", "set"} <= set(found) else {}


def commit_of_release(release: str) -> str:
    """The commit in a release id (`20261125T173005Z-ab12cd3dirty` -> `ab12cd3-dirty`); '' when
    it names none (`nogit`, or not a release id)."""
    match = re.fullmatch(r"[0-9]{8}T[0-9]{6}Z-([0-9a-f]{4,12}?)(dirty)?", release)
    return (match.group(1) + ("-dirty" if match.group(2) else "")) if match else ""


def checkout_problem(recorded: str, head: str, dirty: bool) -> str:
    """Why this checkout (HEAD's full sha, uncommitted changes or not) is not the commit a set's
    release was deployed from (`abc1234`, `abc1234-dirty`); '' when it is that commit."""
    sha = recorded.removesuffix("-dirty")
    if not re.fullmatch(r"[0-9a-f]{4,40}", sha):
        return "the set does not say which commit its release was deployed from"
    if recorded.endswith("-dirty"):
        return (f"the set's release was deployed from commit {sha} with uncommitted changes, "
                "which no checkout can reproduce exactly")
    if not head:
        return "this directory is not a git checkout"
    if not head.startswith(sha):
        return (f"this checkout is commit {head[:len(sha)]}"
                + (" with uncommitted changes" if dirty else ""))
    if dirty:
        return f"this checkout is commit {sha} with uncommitted changes"
    return ""
