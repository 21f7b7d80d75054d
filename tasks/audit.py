"""The audit log on the host: `fab -H HOST audit` shows the latest entries (written by
`Host.audited` / `Host.record` in tasks/host.py)."""

from __future__ import annotations

from invoke import Collection, task

from .commands import audit as commands
from .engines import open_host


@task(name="audit", default=True, help={"lines": "How many of the latest entries to show (default "
                                                 "20)."})
def show(c, lines=20):
    """Show the latest audit log entries of the host (deploys, rollbacks, migrations, locks)."""
    host = open_host(c)
    rows = commands.format_entries(host.conn.run(commands.tail(host.ctx, int(lines)),
                                                 hide=True).stdout)
    print("\n".join(rows) if rows else f"No audit entries on {host.name} yet.")


ns = Collection("audit")
ns.add_task(show)
