"""The bad-day drill as a benchmark, on a throwaway sandbox VPS and an SFTP server on this machine
(run as root): prints figures, asserts nothing.

    uv run python benchmarks/recovery.py [--writers 2] [--after-backup-max 150]

Writers keep POSTing tasks; a backup (pushed off-site) is made; the writers go on for a random
0..N seconds; then the host is lost at that random moment (every container, volume and file of
the app, its off-site key, its cron jobs). `recover --from-offsite` on the bare host brings the
service back. Printed: RTO (loss -> serving again, with the time to authorize the new host's key
on the SFTP server, which an operator does by hand) and RPO (acknowledged writes missing after
recovery, and the span of time they cover). Goals (issue 15): RPO <= 1 minute, RTO <= 10 minutes.
The SFTP repository also holds pgBackRest's WAL archive (archived at least once a minute), so
`recover` brings the database to the last archived WAL, not only to the last set.
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import BIN, SftpServer, Writers, docker_gateway, lose_host, throwaway_sandbox  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writers", type=int, default=2, help="clients POSTing tasks")
    parser.add_argument("--after-backup-max", type=float, default=150, help="the host is lost 0..N s after the backup")
    args = parser.parse_args()
    with throwaway_sandbox("127.0.0.8", "rc") as box:
        sftp = SftpServer(box.work, docker_gateway()).start()
        try:
            env = box.state / ".env"
            env.write_text(env.read_text() + f"OFFSITE_REPOSITORY={sftp.repository}\nOFFSITE_HOST_KEY={sftp.fingerprint}\n"
                           f"OFFSITE_PASSWORD=bench-{random.getrandbits(64):x}\n")
            box.run("fab", "-H", "sandbox", "deploy")
            project, app_dir = box.setting("COMPOSE_PROJECT"), Path("/home") / box.user / box.setting("APP_DIR")

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
            url = f"http://{box.address}:{box.http_port}/api/tasks"
            with Writers(url, clients=args.writers, max_seconds=600) as writers:
                time.sleep(3)
                backup_s, _ = box.run("fab", "-H", "sandbox", "backup")
                backup_done = time.monotonic()
                time.sleep(random.uniform(0, args.after_backup_max))
                lost_at = time.monotonic()
                lose_host(box.user, app_dir, project)
            authorize_s = authorize()
            recover_s, _ = box.run("fab", "-H", "sandbox", "recover", "--from-offsite", "--skip-build")
            rto = time.monotonic() - lost_at
            with urllib.request.urlopen(url, timeout=10) as res:
                assert res.status == 200
            present = {int(i) for i in subprocess.run(
                ["docker", "compose", "-p", project, "exec", "-T", "postgres", "psql", "-U", "postgres", "-d", "tasktracker",
                 "-Atc", "select id from tasks"], capture_output=True, text=True, check=True).stdout.split()}
            missing = [(i, t) for i, t in writers.acknowledged_at if i not in present]
            span = (lost_at - min(t for _, t in missing)) if missing else 0.0
            print(f"Recovery drill ({args.writers} writers, host lost {lost_at - backup_done:.1f} s after the last off-site set):")
            print(f"  backup with off-site copy   {backup_s:7.1f} s")
            print(f"  authorize the new host key  {authorize_s:7.1f} s (by hand on a real day)")
            print(f"  recover --from-offsite      {recover_s:7.1f} s")
            print(f"  RTO (lost -> serving)       {rto:7.1f} s   goal <= 600 s")
            print(f"  RPO                         {len(missing)} of {len(writers.acknowledged_at)} acknowledged writes missing, "
                  f"covering the last {span:.1f} s before the loss   goal <= 60 s")
        finally:
            sftp.remove()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
