"""The test harness itself: how end-to-end modules are laid out on the two workers, the budget
table they are laid out by, and the machine facts the harness reads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import BUDGET_DOC, in_lane_order, lanes, module_budgets
from tests.support import ROOT, interface_address

SANDBOX = {"sandbox", "request"}
HOSTS = {"docker_machine", "hosts"}


@pytest.mark.parametrize("modules, budgets, expected", [
    # The VM-like hosts' modules share a lane; the sandbox's go where there is less time.
    ({"day0": HOSTS, "cluster": HOSTS, "a": SANDBOX, "b": SANDBOX, "c": SANDBOX},
     {"day0": 300, "cluster": 600, "a": 500, "b": 450, "c": 300},
     {"day0": "testhosts", "cluster": "testhosts", "a": "sandbox", "b": "sandbox", "c": "testhosts"}),
    # No VM-like hosts: the sandbox's modules are still spread over both lanes.
    ({"a": SANDBOX, "b": SANDBOX}, {"a": 100, "b": 100}, {"a": "sandbox", "b": "testhosts"}),
    # A module without a budget counts as 120 s.
    ({"a": SANDBOX, "new": SANDBOX, "day0": HOSTS}, {"a": 500, "day0": 100},
     {"a": "sandbox", "new": "testhosts", "day0": "testhosts"}),
])
def test_lanes_balance_the_budgeted_time(modules, budgets, expected):
    assert lanes(modules, budgets) == expected


@pytest.mark.parametrize("items, expected", [
    # In the testhosts lane, the sandbox's tests (s*) move before the VM-like hosts' (h*);
    # the sandbox lane (x*) and the unit tests (u*) keep their places.
    ("u1 h1 x1 s1 h2 s2 x2 u2", "u1 x1 s1 s2 x2 u2 h1 h2"),
    ("u1 s1 h1", "u1 s1 h1"),
    ("h1 h2 x1", "x1 h1 h2"),
    ("x1 s1 u1", "x1 s1 u1"),
])
def test_the_testhosts_lane_runs_its_sandbox_tests_first(items, expected):
    lane = {"h": "testhosts", "s": "testhosts", "x": "sandbox"}
    ordered = in_lane_order(items.split(), lambda i: lane.get(i[0]), lambda i: i[0] in "sx")
    assert " ".join(ordered) == expected


def test_every_end_to_end_module_has_a_budget_and_the_lanes_fit_the_suites_budget():
    budgets = module_budgets()
    e2e = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_e2e_*.py"))
    assert e2e and not [m for m in e2e if m not in budgets], f"add a row to {BUDGET_DOC.name}'s budget table"
    assert not [m for m in budgets if not (ROOT / m).is_file()], "a budget row names a module that is gone"


def test_budget_rows_are_read_from_the_table(tmp_path):
    doc = tmp_path / "dev.md"
    doc.write_text("| module | budget (s) |\n| --- | --- |\n| `tests/test_e2e_x.py` | 240 | deploys |\n"
                   "| tests/test_y.py | 30 |\nnot a row: tests/test_z.py | 9\n")
    assert module_budgets(doc) == {"tests/test_e2e_x.py": 240.0, "tests/test_y.py": 30.0}


def test_this_machines_address_is_read_from_the_interface():
    assert interface_address("lo") == "127.0.0.1"
    with pytest.raises(subprocess.CalledProcessError):
        interface_address("tt-no-such-interface")


@pytest.mark.integration
def test_the_lanes_reach_pytest_xdist(tmp_path):
    """pytest-xdist puts a group's tests on one worker only where it can rename their node ids
    (`...@sandbox`); pytest 9 ignores the rename, which silently spread a module over both workers."""
    (tmp_path / "lane_probe.py").write_text(
        "def pytest_collection_finish(session):\n"
        "    c = session.config\n"
        "    if hasattr(c, 'workerinput'):\n"
        f"        open('{tmp_path}/' + c.workerinput['workerid'], 'w').write("
        "'\\n'.join(i.nodeid for i in session.items))\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-m", "", "-n", "1", "-p", "no:cacheprovider",
                          "-p", "lane_probe", "--setup-plan", "-q", "tests/test_e2e_alerts.py"],
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True)
    ids = (tmp_path / "gw0").read_text().split()
    assert out.returncode in (0, 5), out.stdout + out.stderr
    assert ids and all(i.endswith("@sandbox") for i in ids if "test_e2e_alerts" in i), ids
