"""The test lab: a sandbox VPS and VM-like test hosts on this machine, for the tests and for
rehearsing deploys. Not part of the product: it imports `tasks`, `tasks` never imports it.
`invoke` shows its tasks (workbench.py), `fab` does not."""

from invoke import Collection

from . import sandbox, testhost

ns = Collection()
for module in (sandbox, testhost):
    ns.add_collection(module.ns)
