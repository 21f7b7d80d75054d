"""`fab` entry point: exposes the same task namespace as `invoke` (see tasks/)."""

from tasks import ns  # noqa: F401
