"""Build the React dashboard into frontend/dist, skipping work that is already done."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from invoke import Collection, Exit, task

from .commands import build as commands
from .commands.build import tree_hash
from .commands import sh
from .settings import PROJECT_ROOT

FRONTEND = PROJECT_ROOT / "frontend"
MANIFEST_NAME = "build-manifest.json"
LOCK_STAMP = Path("node_modules") / ".package-lock.sha256"
SKIPPED_DIRS = {"node_modules", "dist", ".dist-build", ".dist-old"}


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(dist: Path) -> dict | None:
    try:
        return json.loads((dist / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def is_up_to_date(frontend: Path = FRONTEND) -> tuple[bool, str]:
    """Whether frontend/dist was built from exactly the current sources and is intact."""
    manifest = read_manifest(frontend / "dist")
    if manifest is None:
        return False, "no previous build"
    if manifest.get("source_sha256") != tree_hash(frontend, SKIPPED_DIRS):
        return False, "sources changed"
    if manifest.get("output_sha256") != tree_hash(frontend / "dist", skip_files={MANIFEST_NAME}):
        return False, "dist/ was modified"
    return True, f"built {manifest.get('built_at')} from commit {manifest.get('git_commit')}"


def git_commit(root: Path = PROJECT_ROOT) -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True,
                               text=True).stdout.strip()
        return f"{sha}-dirty" if dirty else sha
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def git_head(root: Path = PROJECT_ROOT) -> tuple[str, bool]:
    """(HEAD's full sha, whether the checkout has uncommitted changes); ('', False) outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True,
                               text=True).stdout.strip()
        return sha, bool(dirty)
    except (OSError, subprocess.CalledProcessError):
        return "", False


def require_node() -> None:
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        raise Exit(
            f"Cannot build the dashboard: {' and '.join(missing)} not found on PATH. Install "
            "Node.js 20 "
            "with npm (for example `apt-get install nodejs npm`, or nvm), then run `invoke build` "
            f"again. frontend/dist was left as it was.",
            code=2,
        )


@task(help={"force": "Rebuild even when no source file changed since the last build."})
def frontend(c, force=False):
    """Build the dashboard into frontend/dist (npm ci only when the lock file changed)."""
    build_frontend(c, FRONTEND, force=force)


def build_frontend(c, frontend_dir: Path, force: bool = False) -> bool:
    """Build `frontend_dir` into its dist/; returns False when it was already up to date."""
    started = time.monotonic()
    fresh, reason = is_up_to_date(frontend_dir)
    if fresh and not force:
        print(f"Frontend is up to date ({reason}); nothing to build.")
        return False
    require_node()
    lock_hash = file_hash(frontend_dir / "package-lock.json")
    stamp = frontend_dir / LOCK_STAMP
    dist = frontend_dir / "dist"
    with c.cd(str(frontend_dir)):
        if not stamp.is_file() or stamp.read_text().strip() != lock_hash:
            print("[build] package-lock.json changed or node_modules missing: npm ci")
            if not c.run(sh(commands.NPM_CI), warn=True, pty=False).ok:
                raise Exit("`npm ci` failed (its output is above). Check package-lock.json and "
                           "your npm "
                           "registry access, then run `invoke build` again. frontend/dist was left "
                           "as it was.", code=1)
            stamp.write_text(lock_hash)
        staging = frontend_dir / ".dist-build"
        shutil.rmtree(staging, ignore_errors=True)
        print(f"[build] vite build ({reason})")
        result = c.run(sh([*commands.VITE_BUILD, "--outDir", staging.name, "--emptyOutDir"]),
                       warn=True, pty=False)
    if not result.ok:
        shutil.rmtree(staging, ignore_errors=True)
        raise Exit("The Vite build failed (its output is above). Fix the error in frontend/src and "
                   "run "
                   "`invoke build` again. The previous frontend/dist was left as it was.", code=1)
    manifest = {
        "git_commit": git_commit(),
        "built_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source_sha256": tree_hash(frontend_dir, SKIPPED_DIRS),
        "output_sha256": tree_hash(staging),
        "files": sum(len(files) for _, _, files in os.walk(staging)),
    }
    (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    old = frontend_dir / ".dist-old"
    shutil.rmtree(old, ignore_errors=True)
    if dist.exists():
        dist.rename(old)
    staging.rename(dist)
    shutil.rmtree(old, ignore_errors=True)
    print(f"[build] frontend/dist ready: {manifest['files']} files, commit "
          f"{manifest['git_commit']}, {time.monotonic() - started:.1f}s")
    return True


ns = Collection("build")
ns.add_task(frontend, default=True)
