"""Backup benchmark on a throwaway sandbox VPS (run as root): prints figures, asserts nothing.

    uv run python benchmarks/backup.py [--rows 1000000]

Generates a database of about 200 MB, then prints the time and size of our database backup
(streamed pg_dump with row counts in the same snapshot) beside a plain `pg_dump | gzip` of the
same database on the same host, and the verification (restore + count) time separately.
Target (issue 5): ours at most 1.2x the plain dump's time.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import copy_project, free_port  # noqa: E402

BIN = Path(sys.executable).parent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000, help="task rows to generate (about 200 B each)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tasktracker-bk-"))
    copy = copy_project(work / "project")
    state = work / "sandbox"
    user = f"tt-bk-{secrets.token_hex(3)}"
    env = {**os.environ, "TASKTRACKER_SANDBOX_DIR": str(state), "TASKTRACKER_ENV_FILE": str(state / ".env")}

    def run(tool, *argv):
        out = subprocess.run([str(BIN / tool), *argv], cwd=copy, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{tool} {' '.join(argv)} failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout

    try:
        run("invoke", "sandbox.up", "--address", "127.0.0.6", "--port", str(free_port()), "--user", user,
            "--http-port", str(free_port()))
        run("fab", "-H", "sandbox", "deploy")
        pg = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={user}",
                             "--filter", "label=com.docker.compose.service=postgres"], capture_output=True, text=True, check=True).stdout.split()[0]

        def psql(sql):
            return subprocess.run(["docker", "exec", pg, "psql", "-U", "postgres", "-d", "tasktracker", "-Atc", sql],
                                  capture_output=True, text=True, check=True).stdout.strip()

        started = time.monotonic()
        psql(f"INSERT INTO tasks (title, body, status, word_count, summary) SELECT 'task ' || g, "
             f"md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) || md5((g * 31)::text), 'done', g % 50, "
             f"md5((g * 3)::text) FROM generate_series(1, {args.rows}) g")
        size = int(psql("SELECT pg_database_size('tasktracker')"))
        print(f"Backup benchmark: database of {size / 1e6:.0f} MB ({args.rows} rows, generated in {time.monotonic() - started:.0f}s)")

        started = time.monotonic()
        plain = work / "plain.sql.gz"
        with open(plain, "wb") as f:
            dump = subprocess.Popen(["docker", "exec", pg, "pg_dump", "-U", "postgres", "tasktracker"], stdout=subprocess.PIPE)
            subprocess.run(["gzip"], stdin=dump.stdout, stdout=f, check=True)
            dump.wait()
        plain_s = time.monotonic() - started

        run("fab", "-H", "sandbox", "backup")
        backups = Path("/home") / user / "tasktracker" / "backups"
        name = sorted(p.name for p in backups.iterdir() if p.name[:1].isdigit())[-1]
        manifest = json.loads((backups / name / "manifest.json").read_text())
        ours_s = manifest["seconds"]["database"]
        ours_size = manifest["sizes"]["database.dump"]
        print(f"  plain pg_dump | gzip           {plain_s:7.2f} s  {plain.stat().st_size / 1e6:8.1f} MB")
        print(f"  ours (dump + snapshot counts)  {ours_s:7.2f} s  {ours_size / 1e6:8.1f} MB  = {ours_s / plain_s:.2f}x the plain dump's time (target <= 1.2x)")
        print(f"  verification (restore into a scratch database + row counts): {manifest['verification']['seconds']:.2f} s, "
              f"{manifest['verification']['rows']} rows in {manifest['verification']['tables']} tables")
        print(f"  whole set incl. NATS and app files: {manifest['duration_s']} s")
        return 0
    finally:
        subprocess.run([str(BIN / "invoke"), "sandbox.down"], cwd=copy, env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
