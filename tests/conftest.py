"""Session fixtures and the run's shape.

- `docker_machine`: Docker Engine, the Compose v2 plugin and the stand-in images, shared by every
  pytest-xdist worker of the run (tests/shared_machine.py).
- `sandbox`: the sandbox VPS the sandbox tests deploy to, one per run; `deployed`: the stack
  deployed to it once.
- End-to-end modules run in two xdist groups (lanes), one worker each, balanced by the budgets:
  `testhosts` (the VM-like hosts' modules, and sandbox modules that fit beside them, on a sandbox
  of that worker's own) and `sandbox`. The unit tiers fill the gaps.
- At the end: each module's time beside its budget (docs/development.md, "Test budget").
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests.shared_machine import SharedMachine
from tests.support import ROOT, Sandbox

BUDGET_DOC = ROOT / "docs" / "development.md"
MODULE_SECONDS: dict[str, float] = defaultdict(float)
SESSION_STARTED = [time.monotonic()]
SANDBOX_FREE_MODULES: set[str] = set()  # end-to-end modules none of whose tests use the sandbox


@pytest.fixture(scope="session")
def docker_machine(testrun_uid):
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root (Docker, users, sshd)")
    machine = SharedMachine(testrun_uid)
    machine.join()
    try:
        yield machine
    finally:
        machine.leave()


@pytest.fixture(scope="session")
def sandbox(docker_machine):
    box = Sandbox()
    try:
        box.invoke("sandbox.up", "--address", box.address, "--port", str(box.port), "--user", box.user,
                   "--http-port", str(box.http_port))
        Sandbox.running = box
        yield box
    finally:
        retire_the_sandbox()


def retire_the_sandbox() -> None:
    """Remove the worker's sandbox (its stacks, user and sshd) now; the fixture's end then has
    nothing left to do."""
    box, Sandbox.running = Sandbox.running, None
    if box:
        box.invoke("sandbox.down", check=False)
        shutil.rmtree(box.dir, ignore_errors=True)


def pytest_runtest_setup(item):
    """In the `testhosts` lane the sandbox's modules run first (`in_lane_order`); once a test of
    the VM-like hosts starts there, that worker's sandbox is idle for the rest of the run, and its
    stack's health checks would only tax the two cores: it is removed."""
    if os.environ.get("PYTEST_XDIST_WORKER") and Sandbox.running and lane_of_item(item) == "testhosts" \
            and item.module.__name__ in SANDBOX_FREE_MODULES:
        retire_the_sandbox()


def lane_of_item(item) -> str | None:
    marker = item.get_closest_marker("xdist_group")
    return marker.args[0] if marker and marker.args else None


@pytest.fixture(scope="module", autouse=True)
def remove_the_modules_apps(request):
    """After each module, the separate sandbox apps it made (`Sandbox.app_env`) are removed."""
    box = Sandbox.running
    before = box.apps() if box else set()
    yield
    box = Sandbox.running
    if box:
        box.remove_apps(box.apps() - before)


@pytest.fixture(scope="session")
def deployed(sandbox):
    """The stack deployed once to the sandbox with Compose v2 (the main path)."""
    return sandbox.fab("deploy")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the groups
def pytest_collection_modifyitems(config, items):
    """Each end-to-end module joins one of two xdist groups (lanes), one worker each."""
    modules: dict[str, set[str]] = {}
    for item in items:
        if item.get_closest_marker("e2e"):
            modules.setdefault(item.nodeid.split("::")[0], set()).update(item.fixturenames)
    lane_of = lanes(modules, module_budgets())
    SANDBOX_FREE_MODULES.update(m.removesuffix(".py").replace("/", ".") for m, fixtures in modules.items()
                                if "sandbox" not in fixtures)
    for item in items:
        module = item.nodeid.split("::")[0]
        if module in lane_of:
            item.add_marker(pytest.mark.xdist_group(lane_of[module]))
    items[:] = in_lane_order(items, lambda item: lane_of.get(item.nodeid.split("::")[0]),
                             lambda item: "sandbox" in modules[item.nodeid.split("::")[0]])


def in_lane_order(items: list, lane, uses_sandbox) -> list:
    """The same items, the `testhosts` lane's modules that use the sandbox moved before that lane's
    other ones (a stable sort: modules and tests keep their order otherwise)."""
    late = [i for i in items if lane(i) == "testhosts" and not uses_sandbox(i)]
    if not late:
        return items
    first = items.index(late[0])
    rest = [i for i in items[first:] if not (lane(i) == "testhosts" and not uses_sandbox(i))]
    return items[:first] + rest + late


def lanes(modules: dict[str, set[str]], budgets: dict[str, float], default: float = 120) -> dict[str, str]:
    """Module -> lane. The VM-like hosts' modules (no sandbox) share the `testhosts` lane; the
    sandbox's modules, longest budget first, go to whichever lane has less budgeted time so far
    (one in the `testhosts` lane has a sandbox of its own, made by that worker)."""
    time_of = {"sandbox": 0.0, "testhosts": 0.0}
    lane_of: dict[str, str] = {}
    for module, fixtures in modules.items():
        if "sandbox" not in fixtures:
            lane_of[module] = "testhosts"
            time_of["testhosts"] += budgets.get(module, default)
    sandbox_modules = sorted((m for m in modules if m not in lane_of), key=lambda m: -budgets.get(m, default))
    for module in sandbox_modules:
        lane = min(time_of, key=lambda name: (time_of[name], name != "sandbox"))
        lane_of[module] = lane
        time_of[lane] += budgets.get(module, default)
    return lane_of


def pytest_sessionstart(session):
    SESSION_STARTED[0] = time.monotonic()


def pytest_runtest_logreport(report):
    MODULE_SECONDS[report.nodeid.split("::")[0]] += report.duration


def module_budgets(path: Path = BUDGET_DOC) -> dict[str, float]:
    """The budget table in the development docs: `| tests/test_x.py | 120 |` rows, in seconds."""
    if not path.is_file():
        return {}
    rows = re.findall(r"^\|\s*`?(tests/\S+?\.py)`?\s*\|\s*(\d+)\s*\|", path.read_text(), re.MULTILINE)
    return {module: float(seconds) for module, seconds in rows}


def pytest_terminal_summary(terminalreporter):
    if not MODULE_SECONDS:
        return
    budgets = module_budgets()
    wall = time.monotonic() - SESSION_STARTED[0]
    terminalreporter.section("time per module (setup + call + teardown; workers run in parallel)")
    for module, seconds in sorted(MODULE_SECONDS.items(), key=lambda kv: -kv[1])[:12]:
        budget = budgets.get(module)
        mark = "" if budget is None else f"  budget {budget:>5.0f} s" + ("  OVER" if seconds > budget else "")
        terminalreporter.write_line(f"{seconds:8.1f} s  {module}{mark}")
    terminalreporter.write_line(f"{sum(MODULE_SECONDS.values()):8.1f} s  in all modules; {wall:.0f} s of wall time")
