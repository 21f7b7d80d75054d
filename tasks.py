"""`invoke`'s entry, nothing else: invoke finds its collection by the name `tasks`, and in a
directory it takes tasks.py before the tasks/ package (its project config, invoke.yaml, is read
only after that: pyinvoke/invoke#599). Python's own `import tasks` always finds the package, so
this file hands invoke workbench.ns (the package's tasks plus the lab's) and steps aside."""

import sys

del sys.modules[__name__]  # invoke registered this file as `tasks`: let the package have the name

from workbench import ns  # noqa: E402,F401
