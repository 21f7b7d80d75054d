"""What a release is, whatever its id: the files it sends and its settings as digests. A deploy
whose fingerprint is the live release's has nothing to do; one whose backend fingerprint is the
live one's leaves the API and worker running (a dashboard-only change)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .build import paths_digest
from .compose import MIGRATE_FILE
from .release import PROBE_PATH

SENT_PATHS = ("compose.yml", "docker-compose.production.yml", MIGRATE_FILE, "nginx", "backend",
              "postgres", "frontend/dist", PROBE_PATH)
SWARM_SENT_PATHS = ("compose.yml", "docker-compose.production.yml", "swarm.yml", "nginx",
                    "backend", "postgres", "frontend/dist", PROBE_PATH)
RSYNC_EXCLUDES = ("__pycache__", "*.pyc", ".pytest_cache", ".gitkeep")
BACKEND_PATHS = ("compose.yml", "docker-compose.production.yml", "backend", "postgres")
STACK_PATHS = ("compose.yml", "docker-compose.production.yml")


def release_fingerprint(root: Path, env_text: str, variant: str) -> str:
    """Every file a Compose release sends, its settings and the Compose variant, as one digest."""
    return paths_digest(root, SENT_PATHS, hashlib.sha256(variant.encode() + b"\0"
                                                         + env_text.encode()))


def stack_fingerprint(root: Path, rendered_without_id: str) -> str:
    """A swarm release: every file it sends and its stack as rendered without the release id."""
    return paths_digest(root, SWARM_SENT_PATHS, hashlib.sha256(b"swarm\0"
                                                               + rendered_without_id.encode()))


def backend_fingerprint(root: Path, env_text: str, variant: str,
                        paths: tuple[str, ...] = BACKEND_PATHS) -> str:
    """What the API, worker, Postgres and NATS containers depend on: the compose files, backend/,
    postgres/ and the settings. With `paths=STACK_PATHS`: what nginx's container depends on."""
    return paths_digest(root, paths, hashlib.sha256(b"backend\0" + variant.encode() + b"\0"
                                                    + env_text.encode()))
