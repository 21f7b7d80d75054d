"""The architecture holds (ARCHITECTURE.md): layers, no cycles, no shadowed standard library."""

from __future__ import annotations

import ast
import json
import itertools
import subprocess
import sys

import pytest

from tests.support import BIN, ROOT

TASKS = ROOT / "tasks"
TASK_MODULES = sorted(p.stem for p in TASKS.glob("*.py") if p.stem not in ("__init__", "probe"))
LOWER_LAYER = {"host", "compose_engine", "host_data", "swarm", "engines", "pipeline", "planning", "guards", "remote", "settings", "steps", "exits", "identity", "build", "machine", "botapi"}


def imports_of(path):
    tree = ast.parse(path.read_text())
    return tree, [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def test_no_module_shadows_the_standard_library():
    names = {p.stem for p in TASKS.rglob("*.py")} | {p.name for p in TASKS.iterdir() if p.is_dir()}
    assert sorted(names & set(sys.stdlib_module_names)) == []


@pytest.mark.parametrize("path", sorted(TASKS.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_import_inside_a_function(path):
    tree, _ = imports_of(path)
    inside = [f"{node.name}:{inner.lineno}" for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
              for inner in ast.walk(node) if isinstance(inner, (ast.Import, ast.ImportFrom))]
    assert inside == []


@pytest.mark.parametrize("path", sorted((TASKS / "commands").glob("*.py")), ids=lambda p: p.name)
def test_builders_open_no_connection(path):
    _, nodes = imports_of(path)
    modules = {(getattr(n, "module", None) or "") for n in nodes} | {a.name for n in nodes if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in modules if m.split(".")[0] in ("fabric", "invoke", "paramiko")}


def test_task_modules_import_only_lower_layers():
    """A task module imports the host layer and below, never another task module (deploy may use
    build's frontend build, a leaf)."""
    problems = []
    for name in TASK_MODULES:
        _, nodes = imports_of(TASKS / f"{name}.py")
        for node in nodes:
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module and node.module.split(".")[0] != "commands":
                target = node.module.split(".")[0]
                if target not in LOWER_LAYER and target != name:
                    problems.append(f"{name} imports {target}")
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module is None:
                problems += [f"{name} imports {a.name}" for a in node.names if a.name not in LOWER_LAYER | {"remote"}]
    assert problems == []


def test_task_modules_import_in_any_order():
    orders = [list(TASK_MODULES), list(reversed(TASK_MODULES))] + [list(p) for p in itertools.islice(
        itertools.permutations(["tls", "backup", "rollback", "deploy", "host"]), 0, 120, 17)]
    # One interpreter (its start is most of the cost): before each order, every `tasks` module is
    # forgotten, so each order imports the package afresh (an import cycle fails one of them).
    code = (f"import importlib, sys\nfor order in {orders!r}:\n"
            "    for name in [n for n in sys.modules if n == 'tasks' or n.startswith('tasks.')]:\n"
            "        del sys.modules[name]\n"
            "    try:\n"
            "        for m in order:\n"
            "            importlib.import_module('tasks.' + m)\n"
            "    except ImportError as err:\n"
            "        sys.exit(f'{order}: {err!r}')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-800:]


def test_every_task_is_listed_once_and_every_flag_has_help():
    listed = json.loads(subprocess.run([str(BIN / "fab"), "--list", "--list-format", "json"], cwd=ROOT, capture_output=True,
                                       text=True, check=True).stdout)
    from tasks import ns

    bodies = [id(ns[name].body) for name in ns.task_names]
    assert len(bodies) == len(set(bodies)), "a task is listed under two names"
    assert {t["name"] for t in listed["tasks"]} >= {"releases"}
    assert {c["name"] for c in listed["collections"]} >= {"ssl", "deploy", "provision", "testhost"}
    missing = []
    for name in ns.task_names:
        task = ns[name]
        for arg in task.get_arguments():
            if not arg.help:
                missing.append(f"{name} --{arg.name}")
    assert missing == []


def test_in_stream_is_configured_once_on_the_collection():
    from tasks import ns

    assert ns.configuration()["run"]["in_stream"] is False
    offenders = [str(p.relative_to(ROOT)) for p in TASKS.rglob("*.py") if "in_stream=False" in p.read_text()]
    assert offenders == []


def test_release_ids_have_one_maker():
    """Both engines name a release with `commands.release.new_release_id`: a second maker (a
    release-id time format joined to a commit anywhere else) fails here."""
    makers = [path.relative_to(ROOT).as_posix() for path in sorted((ROOT / "tasks").rglob("*.py"))
              if "%Y%m%dT%H%M%SZ')}-" in path.read_text()]
    assert makers == ["tasks/commands/release.py"], makers


ENGINE_MODULES = {"host", "swarm", "engines"}  # the engines, and the one place that picks one


def test_one_release_pipeline_for_both_engines():
    """One release-id maker (called by the pipeline only), one dry run, and no engine branch in a
    task module: where Compose and Swarm differ, the engine object (Host, SwarmHost) answers."""
    sources = {p.stem: p.read_text() for p in TASKS.glob("*.py")}
    makers = sorted(name for name, text in sources.items() if "new_release_id(" in text)
    assert makers == ["pipeline"]
    assert "def new_release_id(" in (TASKS / "commands" / "release.py").read_text()
    assert sorted(name for name, text in sources.items() if "def dry_run(" in text) == ["pipeline"]
    branches = sorted(f"{name}:{node.lineno}" for name, text in sources.items() if name not in ENGINE_MODULES
                      for node in ast.walk(ast.parse(text)) if engine_branch(node))
    assert branches == []


def engine_branch(node: ast.AST) -> bool:
    """`x.engine == ...`, a SwarmHost named, or `Host.open` (not `open_host`)."""
    if isinstance(node, ast.Compare):
        return any(isinstance(x, ast.Attribute) and x.attr == "engine" for x in [node.left, *node.comparators])
    if isinstance(node, ast.Name):
        return node.id == "SwarmHost"
    return (isinstance(node, ast.Attribute) and node.attr == "open" and isinstance(node.value, ast.Name)
            and node.value.id == "Host")
