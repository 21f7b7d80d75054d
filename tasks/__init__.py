"""Task Tracker deploy toolkit: every concern is one module with one Collection."""

from invoke import Collection

from . import audit, backup, build, compose, deploy, lock, migrate, rollback, sandbox, ssl

ns = Collection()
for module in (build, deploy, rollback, compose, migrate, backup, ssl, lock, audit, sandbox):
    ns.add_collection(module.ns)
ns.add_task(rollback.releases)  # `fab -H HOST releases`, beside `rollback`
ns.configure({"tasktracker": {"env_file": None}})
