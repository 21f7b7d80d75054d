"""Task Tracker deploy toolkit: every concern is one module with one Collection, composed here
(ARCHITECTURE.md has the layers)."""

from invoke import Collection

from . import (audit, backup, build, cluster, compose, db, deploy, lock, migrate, offsite,
               provision, rollback, settings_doc, status, telegram, tls)

ns = Collection()
for module in (build, provision, deploy, rollback, compose, migrate, db, backup, tls, telegram,
               lock, audit, status, cluster, settings_doc):
    ns.add_collection(module.ns)  # tls.ns is named `ssl` (the module is tls.py: stdlib has `ssl`)
ns.add_task(rollback.releases)  # `fab -H HOST releases`, beside `rollback`
ns.add_task(status.doctor)  # `fab -H HOST doctor`, beside `status`
ns.add_task(deploy.recover)  # `fab -H NEWHOST recover --from-offsite`, beside `deploy`
backup.ns.add_collection(offsite.ns)  # `backup.offsite.*`
backup.ns.add_task(offsite.drill)  # `backup.drill`
# Tasks never read the terminal's stdin for remote commands (CI has none); set once, here.
ns.configure({"tasktracker": {"env_file": None}, "run": {"in_stream": False}})
