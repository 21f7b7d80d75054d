"""Local build commands, and the content hash that tags what is built."""

import hashlib
import os
from pathlib import Path

NPM_CI = ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
VITE_BUILD = ["npm", "run", "build", "--", "--logLevel", "warn"]


def tree_hash(root: Path, skip_dirs: set[str] = frozenset(),
              skip_files: set[str] = frozenset()) -> str:
    """sha256 over every file's relative path and content, in a stable order."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs)
        for name in sorted(filenames):
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            if rel in skip_files:
                continue
            digest.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def paths_digest(root: Path, rels: tuple[str, ...] | list[str], digest=None) -> str:
    """sha256 (continuing `digest` when given) over each path's name and content: a directory by
    `tree_hash` (caches skipped), a file by its bytes."""
    digest = digest or hashlib.sha256()
    for rel in rels:
        path = root / rel
        digest.update(rel.encode() + b"\0")
        digest.update((tree_hash(path, {"__pycache__", ".pytest_cache"}) if path.is_dir() else
                       hashlib.sha256(path.read_bytes()).hexdigest()).encode())
    return digest.hexdigest()
