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
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import throwaway_sandbox  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000, help="task rows to generate (about 200 B each)")
    args = parser.parse_args()
    with throwaway_sandbox("127.0.0.6", "bk") as box:
        box.run("fab", "-H", "sandbox", "deploy")
        pg = subprocess.run(["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={box.setting('COMPOSE_PROJECT')}",
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
        plain = box.work / "plain.sql.gz"
        with open(plain, "wb") as f:
            dump = subprocess.Popen(["docker", "exec", pg, "pg_dump", "-U", "postgres", "tasktracker"], stdout=subprocess.PIPE)
            subprocess.run(["gzip"], stdin=dump.stdout, stdout=f, check=True)
            dump.wait()
        plain_s = time.monotonic() - started

        box.run("fab", "-H", "sandbox", "backup")
        backups = Path("/home") / box.user / "tasktracker" / "backups"
        name = sorted(p.name for p in backups.iterdir() if p.name[:1].isdigit())[-1]
        manifest = json.loads((backups / name / "manifest.json").read_text())
        plain_size = plain.stat().st_size
    ours_s = manifest["seconds"]["database"]
    print(f"  plain pg_dump | gzip           {plain_s:7.2f} s  {plain_size / 1e6:8.1f} MB")
    print(f"  ours (dump + snapshot counts)  {ours_s:7.2f} s  {manifest['sizes']['database.dump'] / 1e6:8.1f} MB  "
          f"= {ours_s / plain_s:.2f}x the plain dump's time (target <= 1.2x)")
    print(f"  verification (restore into a scratch database + row counts): {manifest['verification']['seconds']:.2f} s, "
          f"{manifest['verification']['rows']} rows in {manifest['verification']['tables']} tables")
    print(f"  whole set incl. NATS and app files: {manifest['duration_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
