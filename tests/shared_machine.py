"""What every end-to-end test of one run shares on this machine, whatever the number of
pytest-xdist workers: a running Docker Engine, the Compose v2 plugin, the stand-in images, the
VM-like host image and the dashboard's build (every deploy of the run then finds it built, and no
two workers build it at once; `scripts/test` builds it before any test, so that no unit test copies
frontend/ while npm writes to it). What is missing is made in parallel: a fresh machine waits for the
slowest debootstrap, not for the sum of three.

The first worker to join sets up what is missing, under a file lock, and records what it started
or installed in the run's own directory; the last worker to leave undoes exactly that (a dockerd
that was already running, or a plugin that was already there, is left alone)."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from lab.machine import (ensure_standin_images, install_compose_plugin, read_records, start_dockerd,
                         write_records)
from lab.testhost import ensure_image as ensure_testhost_image
from tests.support import BIN, ROOT


class SharedMachine:
    """Docker, the Compose plugin and the stand-in images, joined and left by each worker."""

    def __init__(self, run_id: str):
        self.dir = Path(tempfile.gettempdir()) / f"tasktracker-run-{run_id}"
        self.records = self.dir / "machine.json"

    @contextmanager
    def _locked(self):
        self.dir.mkdir(mode=0o700, exist_ok=True)
        with open(self.dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            records = read_records(self.records)
            yield records
            write_records(self.records, records)

    def join(self) -> None:
        with self._locked() as records:
            pid = start_dockerd(self.dir / "dockerd.log")
            if pid:
                records["dockerd_pid"] = pid
            plugin = install_compose_plugin()
            if plugin:
                records["compose_plugin"] = str(plugin)
            with ThreadPoolExecutor(max_workers=3) as pool:
                for made in [pool.submit(ensure_standin_images), pool.submit(ensure_testhost_image),
                             pool.submit(build_dashboard)]:
                    made.result()
            records["workers"] = records.get("workers", 0) + 1

    def leave(self) -> None:
        with self._locked() as records:
            records["workers"] = records.get("workers", 1) - 1
            if records["workers"] > 0:
                return
            if records.get("compose_plugin"):
                Path(records.pop("compose_plugin")).unlink(missing_ok=True)
            if records.get("dockerd_pid"):
                stop_process(records.pop("dockerd_pid"))
        shutil.rmtree(self.dir, ignore_errors=True)


def build_dashboard() -> None:
    """`invoke build` in this checkout (skipped when frontend/dist is current)."""
    out = subprocess.run([str(BIN / "invoke"), "build"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"invoke build failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")


def stop_process(pid: int, timeout: float = 30) -> None:
    """SIGTERM a process this run started, and wait for it to go."""
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child: reap it
                return
        except ChildProcessError:  # another worker's: gone when signal 0 fails
            try:
                os.kill(pid, 0)
            except OSError:
                return
        time.sleep(0.2)
