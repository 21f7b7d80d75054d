"""Task Tracker deploy toolkit: every concern is one module with one Collection."""

from invoke import Collection

from . import build, compose, deploy, migrate, sandbox

ns = Collection()
for module in (build, deploy, compose, migrate, sandbox):
    ns.add_collection(module.ns)
ns.configure({"tasktracker": {"env_file": None}})
