"""What `invoke` lists (through the top-level tasks.py): the product's tasks (`tasks.ns`, all
that `fab` shows) plus the test lab's `sandbox.*` and `testhost.*` (lab/). Loaded from the top
level, so invoke puts the project's root, not tasks/, on sys.path."""

from invoke import Collection

import lab
import tasks

ns = Collection()
for part in (tasks.ns, lab.ns):
    for name, task in part.tasks.items():
        ns.add_task(task, name)
    for name, collection in part.collections.items():
        ns.add_collection(collection, name)
ns.configure(tasks.ns.configuration())
