"""The architecture holds (ARCHITECTURE.md): layers, no cycles, no shadowed standard library, and
the product (tasks/) never imports the test lab (lab/)."""

from __future__ import annotations

import ast
import io
import json
import itertools
import subprocess
import sys
import tokenize

import pytest

from tests.support import BIN, ROOT

TASKS = ROOT / "tasks"
LAB = ROOT / "lab"
TASK_MODULES = sorted(p.stem for p in TASKS.glob("*.py") if p.stem not in ("__init__", "probe"))
LOWER_LAYER = {"host", "compose_engine", "host_data", "swarm", "swarm_nodes", "engines", "pipeline",
               "planning", "guards", "remote", "settings", "settings_checks", "settings_files",
               "settings_groups", "steps", "exits", "identity", "build", "localhost", "botapi",
               "health_checks", "schedule_checks", "status_screen", "preflight", "release_env",
               "swarm_plan", "shipping", "settings_managed", "secret_value"}
SOURCES = sorted([*TASKS.rglob("*.py"), *LAB.rglob("*.py")])


def imports_of(path):
    tree = ast.parse(path.read_text())
    return tree, [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def test_no_module_shadows_the_standard_library():
    """Nor a top-level one: invoke (workbench.py) and fab (fabfile.py) put the root on sys.path."""
    names = {p.stem for p in TASKS.rglob("*.py")} | {p.name for p in TASKS.iterdir() if p.is_dir()}
    names |= {p.stem for p in LAB.rglob("*.py")} | {p.name for p in LAB.iterdir() if p.is_dir()}
    names |= {p.stem for p in ROOT.glob("*.py")}
    names |= {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert {"workbench", "lab", "tasks"} <= names
    assert sorted(names & set(sys.stdlib_module_names)) == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_import_inside_a_function(path):
    tree, _ = imports_of(path)
    inside = [f"{node.name}:{inner.lineno}" for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
              for inner in ast.walk(node) if isinstance(inner, (ast.Import, ast.ImportFrom))]
    assert inside == []


BUILDERS = sorted([*(TASKS / "commands").glob("*.py"), *(LAB / "commands").glob("*.py")])


@pytest.mark.parametrize("path", BUILDERS, ids=lambda p: str(p.relative_to(ROOT)))
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


def test_the_product_never_imports_the_lab():
    """The lab (lab/) may import tasks/; no module of tasks/ imports the lab or workbench.py, and
    importing the product (as `fab` does) loads neither."""
    problems = []
    for path in sorted(TASKS.rglob("*.py")):
        _, nodes = imports_of(path)
        names = [a.name for n in nodes if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in nodes
                  if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module]
        problems += [f"{path.relative_to(ROOT)} imports {name}" for name in names
                     if name.split(".")[0] in ("lab", "workbench")]
    assert problems == []
    code = ("import sys, fabfile\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lab', 'workbench')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert (out.returncode, out.stdout) == (0, "[]\n"), out.stderr[-800:]


def test_invoke_loads_the_workbench_with_the_root_on_sys_path():
    """invoke's own loader finds tasks.py (before the tasks/ package), gets workbench.ns from it
    and puts the project's root first on sys.path; `tasks` stays the package."""
    code = ("import sys\n"
            "from invoke import Config, FilesystemLoader\n"
            "module, parent = FilesystemLoader(config=Config()).load()\n"
            "import tasks, workbench\n"
            "assert module.ns is workbench.ns, module\n"
            "assert tasks.__file__.endswith('tasks/__init__.py'), tasks.__file__\n"
            "print(parent == sys.path[0], sorted(workbench.ns.collections))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-800:]
    first, collections = out.stdout.split(" ", 1)
    assert first == "True" and "'sandbox'" in collections and "'testhost'" in collections


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
    from workbench import ns  # the product's tasks and the lab's

    bodies = [id(ns[name].body) for name in ns.task_names]
    assert len(bodies) == len(set(bodies)), "a task is listed under two names"
    assert {t["name"] for t in listed["tasks"]} >= {"releases"}
    fab_collections = {c["name"] for c in listed["collections"]}
    assert fab_collections >= {"ssl", "deploy", "provision", "cluster"}
    assert not fab_collections & {"sandbox", "testhost"}, "fab shows the lab's tasks"
    assert {"sandbox.up", "testhost.up"} <= set(ns.task_names)
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


ENGINE_MODULES = {"host", "swarm", "swarm_nodes", "swarm_plan", "engines"}  # the engines; the one place picking one


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


MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_COLUMNS = 100
PRODUCT_SOURCES = sorted(TASKS.rglob("*.py"))


def test_modules_and_functions_stay_small():
    """No module of tasks/ over MAX_MODULE_LINES lines, no function over MAX_FUNCTION_LINES
    (from its `def` to its last line): split by concern, into named steps."""
    too_long = []
    for path in PRODUCT_SOURCES:
        text, name = path.read_text(), path.relative_to(ROOT).as_posix()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{name}: {len(text.splitlines())} lines")
        too_long += [f"{name}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
                     for node in ast.walk(ast.parse(text))
                     if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                     and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert too_long == []



def wide_lines(path) -> list[int]:
    """Lines over MAX_COLUMNS, except where column MAX_COLUMNS falls inside a multi-line string:
    a host-side script or file the builders send, whose lines are what the host reads."""
    text = path.read_text()
    texts = [t for t in tokenize.generate_tokens(io.StringIO(text).readline)
             if t.type == tokenize.STRING and t.end[0] > t.start[0]]
    inside = {row for t in texts for row in range(t.start[0] + 1, t.end[0] + 1)}
    inside |= {t.start[0] for t in texts if t.start[1] < MAX_COLUMNS}
    return [number for number, line in enumerate(text.splitlines(), 1)
            if len(line) > MAX_COLUMNS and number not in inside]


def test_lines_fit_in_100_columns():
    """tasks/ reads at MAX_COLUMNS columns (the host-side scripts it embeds excepted)."""
    wide = [f"{path.relative_to(ROOT).as_posix()}:{number}"
            for path in PRODUCT_SOURCES for number in wide_lines(path)]
    assert wide == [], f"{len(wide)} lines over {MAX_COLUMNS} columns"
