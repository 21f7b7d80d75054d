"""Task Tracker deploy toolkit: every concern is one module with one Collection."""

from invoke import Collection

from . import build

ns = Collection()
ns.add_collection(build.ns)
ns.configure({"tasktracker": {"env_file": None}})
