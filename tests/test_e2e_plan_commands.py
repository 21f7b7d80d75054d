"""The "From the plan to the toolkit" table (docs/design.md), tested: every command of a "works as-is" row
runs on the sandbox as the deploy user over SSH from `APP_DIR/current`, as a person following the
plan would type it, and every replacement the table names runs too (`fab -H vps TASK` from this
machine, anything else on the host). They run on an app of their own (own APP_DIR, project and
ports) so that restarts, backups and `ssl.issue` (against Pebble) disturb no other test.

The sandbox's ports are not the plan's: the commands get the app's HTTP_PORT for `localhost`'s 80;
`~/tasktracker`, the project's volume names and the
example domain and e-mail are mapped the same way. Commands that stream until Ctrl-C (`logs -f`,
`docker stats`) are interrupted after a few seconds."""

from __future__ import annotations

import re
import shlex
import subprocess
import urllib.request
from dataclasses import dataclass

import pytest
from dotenv import dotenv_values

from tests.support import DOMAIN, ROOT, Pebble, wait_for

APP = "plan"
SECTION = "## From the plan to the toolkit"
COMMAND = re.compile(r"`((?:fab -H vps|docker|curl) [^`]+)`")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# What each command must print besides exiting 0 (first match wins; host commands print something).
EXPECT = [
    (r"^fab -H vps deploy", r"is live on sandbox|Nothing changed since release"),
    (r"compose[ .]ps$", r"-api-\d+.*healthy"),
    (r"logs", r"(worker|api|nginx|postgres|nats)-\d+\s+\|"),
    (r"/api/health", r'"status":\s*"ok"'),
    (r"/nginx-health", r"^healthy"),
    (r"alembic", r"Context impl PostgresqlImpl"),
    (r"psql", r"\btasks\b.*\btable\b"),
    (r"ssl\.issue", rf"HTTPS is enabled for {re.escape(DOMAIN)}"),
    (r"ssl\.schedule", r"Daily renewal installed"),
    (r"docker stats", r"MEM USAGE"),
    (r"fab -H vps status", r"api"),
    (r"/varz", r'(?s)"server_id".*"jetstream"'),
    (r"volume inspect", r'"Mountpoint"'),
    (r"fab -H vps backup$", r"is complete and verified on sandbox"),
    (r"backup\.schedule", r"Daily backup installed"),
]


@dataclass(frozen=True)
class Run:
    command: str  # as written in docs/design.md
    where: str  # "host" (SSH, from APP_DIR/current) or "fab" (this machine)
    as_is: bool  # the plan's own command, unchanged


def plan_table(readme: str) -> list[tuple[str, str]]:
    """(the plan says, on a toolkit host) for each row of the design notes' table."""
    body = readme.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in body.splitlines() if line.startswith("| ")][2:]  # past the header and |---|
    return [tuple(cell.strip() for cell in line.strip().strip("|").split(" | ")) for line in rows]


def runs(plan: str, toolkit: str) -> list[Run]:
    found = []
    if toolkit.startswith("works as-is"):
        found += [Run(cmd, "host", True) for cmd in COMMAND.findall(plan)]
    found += [Run(cmd, "fab" if cmd.startswith("fab ") else "host", False) for cmd in COMMAND.findall(toolkit)]
    return found


TABLE = plan_table((ROOT / "docs" / "design.md").read_text())
RUNS = [run for row in TABLE for run in runs(*row)]


def test_the_table_quotes_the_plan_and_names_real_tasks():
    """Not e2e: the rows' first column is what the plan really says, every row either works as-is
    or names what replaces it, and every `fab` task it names exists."""
    from tasks import ns

    plan = (ROOT / "docs" / "vps-deployment-strategy.md").read_text()
    assert len(TABLE) >= 10
    for said, toolkit in TABLE:
        assert toolkit.startswith(("works as-is", "replaced by `")), toolkit
        quoted = [cmd for cmd in re.findall(r"`([^`]+)`", said) if cmd.split()[0] in ("docker", "curl", "sudo")
                  and "..." not in cmd]
        assert quoted and all(cmd in plan for cmd in quoted), said
        assert runs(said, toolkit), f"nothing to run for {said}"
    names = {name for task, aliases in ns.task_names.items() for name in (task, *aliases)}
    for run in RUNS:
        if run.where == "fab":
            assert shlex.split(run.command)[3] in names, run.command
    for must in ("docker compose exec api uv run alembic upgrade head", "curl http://localhost:8000/api/health",
                 "docker compose logs -f worker", "docker stats", "curl http://localhost:8222/varz"):
        assert any(must in said for said, _ in TABLE), must


@pytest.fixture(scope="module")
def plan_app(sandbox, deployed):
    env = sandbox.app_env(APP)
    sandbox.fab("deploy", "--skip-build", env_file=env)
    pebble = Pebble(sandbox.ports[APP]).start()
    try:
        yield env, pebble
    finally:
        pebble.stop()
        sandbox.fab("compose.down", "--volumes", "--yes", env_file=env, check=False)  # its own project only


def on_host(sandbox, env: dict, command: str) -> tuple[int, str]:
    """The command as the deploy user types it in APP_DIR/current, in a terminal (ssh -tt) of a
    real size (psql pages only what is longer than the screen)."""
    command = (command.replace("http://localhost/", f"http://localhost:{env['HTTP_PORT']}/")
               .replace("tasktracker_", f"{env['COMPOSE_PROJECT']}_"))
    if re.search(r"\blogs -f\b|\blogs .*--follow\b", command) or (command.startswith("docker stats") and "--no-stream" not in command):
        # Ctrl-C after a few seconds: SIGINT to the whole process group, as a terminal sends it (the
        # Compose plugin is a child of the docker CLI, which does not pass a SIGTERM on to it).
        command = f"timeout -s INT 6 {command}"
    out = subprocess.run(["ssh", "-F", str(sandbox.dir / "ssh_config"), "-o", "BatchMode=yes", "-tt", "sandbox",
                          f"stty rows 50 cols 200; cd ~/{APP}/current && {command}"], capture_output=True, text=True, timeout=180,
                         stdin=subprocess.DEVNULL)
    code = 0 if out.returncode == 124 and command.startswith("timeout ") else out.returncode
    return code, ANSI.sub("", out.stdout.replace("\r\n", "\n") + out.stderr)  # a terminal gets colours


def with_fab(sandbox, env_file, pebble, command: str) -> tuple[int, str]:
    args = shlex.split(command)[3:]  # past `fab -H vps`
    args = [{"you@example.com": "ops@example.test", "yourdomain.com": DOMAIN}.get(a, a) for a in args]
    if args[0] == "ssl.issue":
        args += ["--server", pebble.directory, "--ca-bundle", pebble.ca_bundle]
    out = sandbox.fab(*args, env_file=env_file, check=False)
    return out.returncode, out.stdout + out.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("run", RUNS, ids=[f"{r.where}:{r.command[:60]}" for r in RUNS])
def test_each_command_of_the_table_works_on_a_deployed_host(sandbox, plan_app, run):
    env_file, pebble = plan_app
    env = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    code, output = (on_host(sandbox, env, run.command) if run.where == "host"
                    else with_fab(sandbox, env_file, pebble, run.command))
    assert code == 0, f"`{run.command}` exited {code}:\n{output[-3000:]}"
    expected = next((want for pattern, want in EXPECT if re.search(pattern, run.command)), None)
    if expected:
        assert re.search(expected, output, re.MULTILINE), f"`{run.command}` printed:\n{output[-3000:]}"
    else:
        assert output.strip() or run.where == "fab", f"`{run.command}` printed nothing"
    if "restart" in run.command or "compose.up" in run.command:
        url = f"http://{sandbox.address}:{env['HTTP_PORT']}/api/health"
        wait_for(lambda: urllib.request.urlopen(url, timeout=5).status == 200, 60, what="the API after a restart")
