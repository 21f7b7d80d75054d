"""The GitHub workflows: schema-valid, pinned actions, and deploy.yml's own `run:` steps deploying
to the sandbox with the secrets a repository would hold."""

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT, copy_project

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
BIN = Path(sys.executable).parent


def test_workflows_validate_against_the_github_schema():
    out = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert {p.name for p in WORKFLOWS} == {"ci.yml", "deploy.yml"}


def triggers(workflow: dict) -> dict:
    return workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as true


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_commit_named_by_its_version(path):
    """A tag can be moved to other code; a commit cannot. The comment says which release it is."""
    text = path.read_text()
    workflow = yaml.safe_load(text)
    uses = [step["uses"] for job in workflow["jobs"].values() for step in job.get("steps", []) if "uses" in step]
    assert uses
    for ref in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), f"{ref} is not pinned to a full commit SHA"
        assert re.search(rf"uses: {re.escape(ref)} # v\d+\.\d+\.\d+$", text, re.M), f"{ref} has no '# vX.Y.Z' comment"
    # The same action is pinned to the same commit everywhere.
    pins = {}
    for match in re.finditer(r"uses: ([\w.-]+/[\w.-]+)@([0-9a-f]{40}) # (v[\d.]+)$", "".join(p.read_text() for p in WORKFLOWS), re.M):
        assert pins.setdefault(match.group(1), match.group(2, 3)) == match.group(2, 3), match.group(1)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_checkout_leaves_no_credentials_behind(path):
    workflow = yaml.safe_load(path.read_text())
    checkouts = [step for job in workflow["jobs"].values() for step in job.get("steps", []) if step.get("uses", "").startswith("actions/checkout@")]
    assert checkouts
    for step in checkouts:
        assert step.get("with", {}).get("persist-credentials") is False


DEPLOY = ROOT / ".github" / "workflows" / "deploy.yml"
MAIN_PASSED = {"github.event_name": "workflow_run", "github.repository": "team/task-tracker", "github.ref": "refs/heads/main",
               "github.event.workflow_run.conclusion": "success", "github.event.workflow_run.event": "push",
               "github.event.workflow_run.head_branch": "main", "github.event.workflow_run.head_sha": "c0ffee",
               "github.event.workflow_run.head_repository.full_name": "team/task-tracker", "github.sha": "d00d"}
TAG_PUSHED = {"github.event_name": "push", "github.repository": "team/task-tracker", "github.ref": "refs/tags/v1.4.0",
              "github.ref_name": "v1.4.0", "github.sha": "beef"}


def dispatched(environment: str) -> dict:
    return {"github.event_name": "workflow_dispatch", "github.ref": "refs/heads/main", "github.sha": "d00d",
            "inputs.environment": environment, "inputs.rollback_to": "20240101-000000-abc"}


def expression(value, context: dict) -> str:
    """Each `${{ ... }}` in `value` evaluated as the runner would, for the operators the workflows
    use (==, &&, ||, parentheses, startsWith); a context value not given is ''."""
    def one(match: re.Match) -> str:
        code = " ".join(match.group(1).split())
        code = re.sub(r"\b(?:github|inputs|secrets|env)(?:\.[\w-]+)+", lambda m: repr(context.get(m.group(0), "")), code)
        code = code.replace("&&", " and ").replace("||", " or ").replace("startsWith(", "_starts(")
        result = eval(code, {"__builtins__": {}, "_starts": str.startswith})  # our own workflow file
        return str(result).lower() if isinstance(result, bool) else str(result)
    return re.sub(r"\$\{\{(.*?)\}\}", one, str(value), flags=re.S)


@pytest.mark.parametrize("context, runs", [
    (MAIN_PASSED, True),
    ({**MAIN_PASSED, "github.event.workflow_run.conclusion": "failure"}, False),
    ({**MAIN_PASSED, "github.event.workflow_run.event": "pull_request"}, False),
    ({**MAIN_PASSED, "github.event.workflow_run.head_repository.full_name": "fork/task-tracker"}, False),
    ({**MAIN_PASSED, "github.event.workflow_run.head_branch": "feature"}, False),
    (TAG_PUSHED, True),
    ({**TAG_PUSHED, "github.ref": "refs/heads/v2-branch"}, False),
    (dispatched("production"), True),
    # A rollback runs this file from the ref it was dispatched on, with the environment's secrets:
    # only main's copy may (issue 24).
    ({**dispatched("production"), "github.ref": "refs/heads/feature"}, False),
    ({**dispatched("staging"), "github.ref": "refs/tags/v9.9.9"}, False),
], ids=["main-passed", "ci-failed", "pull-request", "fork", "other-branch", "tag", "branch-named-v", "dispatch",
        "dispatch-from-a-branch", "dispatch-from-a-tag"])
def test_deploy_runs_only_after_ci_passed_on_main_for_a_tag_or_to_roll_back(context, runs):
    deploy = yaml.safe_load(DEPLOY.read_text())
    assert expression("${{ " + deploy["jobs"]["deploy"]["if"] + " }}", context) == str(runs).lower()


def test_deploy_triggers_and_the_commit_it_checks_out():
    ci = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    deploy = yaml.safe_load(DEPLOY.read_text())
    assert "push" in triggers(ci)
    on = triggers(deploy)
    assert set(on) == {"workflow_run", "push", "workflow_dispatch"}
    assert on["push"] == {"tags": ["v*"]}, "a branch push deploys only through CI; only version tags push-trigger"
    assert on["workflow_run"] == {"workflows": [ci["name"]], "types": ["completed"], "branches": ["main"]}
    job = deploy["jobs"]["deploy"]
    # Manual runs only roll back, in the environment chosen; they never deploy untested code.
    inputs = on["workflow_dispatch"]["inputs"]
    assert inputs["rollback_to"]["required"] is True
    assert inputs["environment"]["type"] == "choice" and inputs["environment"]["options"] == ["staging", "production"]
    assert [step["name"] for step in job["steps"] if "fab -H deploy-target rollback" in step.get("run", "")] == ["Roll back"]
    checkout = next(step for step in job["steps"] if step.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["ref"] == "${{ github.event.workflow_run.head_sha || github.sha }}"
    assert expression(checkout["with"]["ref"], MAIN_PASSED) == "c0ffee"  # the commit CI tested, not a newer one
    assert expression(checkout["with"]["ref"], TAG_PUSHED) == "beef"


@pytest.mark.parametrize("context, environment", [
    (MAIN_PASSED, "staging"), (TAG_PUSHED, "production"), (dispatched("staging"), "staging"),
    (dispatched("production"), "production"),
], ids=["main-staging", "tag-production", "rollback-staging", "rollback-production"])
def test_each_run_deploys_one_environment_with_its_own_secrets_one_at_a_time(context, environment):
    job = yaml.safe_load(DEPLOY.read_text())["jobs"]["deploy"]
    assert expression(job["environment"], context) == environment
    assert expression(job["concurrency"]["group"], context) == f"deploy-{environment}"
    assert job["concurrency"]["cancel-in-progress"] is False
    # The same secret names in every GitHub environment: the environment decides which values.
    assert set(re.findall(r"secrets\.(\w+)", json.dumps(job))) == {"DEPLOY_HOST", "DEPLOY_USER", "DEPLOY_PORT", "DEPLOY_SSH_KEY",
                                                                "DEPLOY_KNOWN_HOSTS", "APP_ENV"}


def tag_check(job: dict) -> dict:
    return next(step for step in job["steps"] if step.get("name") == "CI passed on main for the tagged commit")


def test_a_tag_deploys_production_only_when_ci_passed_on_main_for_its_commit():
    job = yaml.safe_load(DEPLOY.read_text())["jobs"]["deploy"]
    step = tag_check(job)
    names = [s.get("name") or s["uses"] for s in job["steps"]]
    assert names.index(step["name"]) < names.index("SSH key and pinned host key")
    assert step["if"] == "env.RELEASE_TAG != ''"
    assert expression(job["env"]["RELEASE_TAG"], TAG_PUSHED) == "v1.4.0"
    assert expression(job["env"]["RELEASE_TAG"], MAIN_PASSED) == expression(job["env"]["RELEASE_TAG"], dispatched("production")) == ""
    assert job["permissions"] == {"contents": "read", "actions": "read"}
    assert step["env"] == {"GH_TOKEN": "${{ github.token }}"}


@pytest.mark.parametrize("passed", [0, 1], ids=["ci-not-passed", "ci-passed"])
def test_the_tag_check_asks_github_for_a_successful_push_run_on_main(tmp_path, passed):
    """The step's own script, with a stand-in `gh` that records its arguments."""
    (tmp_path / "gh").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{tmp_path}/args"\necho {passed}\n')
    (tmp_path / "gh").chmod(0o755)
    step = tag_check(yaml.safe_load(DEPLOY.read_text())["jobs"]["deploy"])
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "RELEASE_TAG": "v1.4.0", "GITHUB_REPOSITORY": "team/task-tracker",
           "GH_TOKEN": "t"}
    out = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    args = (tmp_path / "args").read_text().split("\n")
    assert args[:2] == ["run", "list"]
    for flag, value in (("--repo", "team/task-tracker"), ("--workflow", "ci.yml"), ("--branch", "main"), ("--event", "push"),
                        ("--commit", head), ("--status", "success")):
        assert args[args.index(flag) + 1] == value, flag
    if passed:
        assert out.returncode == 0 and f"CI passed on main for v1.4.0 ({head})." in out.stdout
    else:
        assert out.returncode == 1
        assert f"::error::v1.4.0 ({head}) has no successful CI run for a push to main." in out.stdout
        assert "Nothing was deployed." in out.stdout


def test_deploy_job_runs_no_npm_install_scripts():
    """The job that later holds the deploy key runs `npm ci` (inside `invoke build`) without scripts."""
    job = yaml.safe_load((ROOT / ".github" / "workflows" / "deploy.yml").read_text())["jobs"]["deploy"]
    assert job["env"]["NPM_CONFIG_IGNORE_SCRIPTS"] == "true"
    names = [step.get("name") for step in job["steps"]]
    assert names.index("Build the dashboard") < names.index("SSH key and pinned host key")


def test_deploy_job_uses_no_cache_and_installs_only_the_toolkit():
    """A cache another run wrote (a pull request's) must not reach the job with the deploy key;
    it installs the project's own dependencies only (no test tools, no reference backend)."""
    job = yaml.safe_load(DEPLOY.read_text())["jobs"]["deploy"]
    inputs = {step["uses"].split("@")[0]: step.get("with", {}) for step in job["steps"] if "uses" in step}
    assert inputs["actions/setup-node"].get("package-manager-cache") is False and "cache" not in inputs["actions/setup-node"]
    assert inputs["astral-sh/setup-uv"].get("enable-cache") is False
    installs = [step["run"].strip() for step in job["steps"] if "uv sync" in step.get("run", "")]
    assert installs == ["uv sync --frozen --no-default-groups"]
    assert job["env"]["UV_NO_SYNC"] == "1"  # `uv run` would otherwise install the default groups


def test_deploy_workflow_holds_no_deploy_logic_and_echoes_no_secret():
    workflow = yaml.safe_load(DEPLOY.read_text())
    job = workflow["jobs"]["deploy"]
    runs = "\n".join(step.get("run", "") for step in job["steps"])
    assert "ssh-keyscan" not in runs
    for command in ("docker", "rsync", "scp", "ssh "):
        assert command not in runs, f"deploy logic ({command}) belongs in the tasks, not the workflow"
    assert "fab -H deploy-target deploy --skip-build" in runs and "invoke build" in runs
    assert "secrets." not in runs  # secrets reach steps only through env, never inline in a command


def evaluate(expression: str, env: dict) -> bool:
    expression = expression.strip()
    if expression == "always()":
        return True
    match = re.fullmatch(r"env\.(\w+) (==|!=) ''", expression)
    assert match, f"the test runner does not understand `if: {expression}`"
    empty = env.get(match.group(1), "") == ""
    return empty if match.group(2) == "==" else not empty


def substitute(value: str, secrets: dict, inputs: dict) -> str:
    """A value as the runner sees it for a deploy after CI passed on main (or a dispatch, with inputs)."""
    context = {**MAIN_PASSED, "github.token": "not-a-token"} if not inputs else {**dispatched(""), "github.token": "not-a-token"}
    return expression(value, {**context, **{f"secrets.{k}": v for k, v in secrets.items()},
                              **{f"inputs.{k}": v for k, v in inputs.items()}})


def run_deploy_workflow(project: Path, home: Path, secrets: dict, inputs: dict | None = None) -> list[tuple[str, subprocess.CompletedProcess]]:
    """deploy.yml's `run:` steps in order, as the runner would (bash -e, job then step env)."""
    inputs = inputs or {}
    workflow = yaml.safe_load((project / ".github" / "workflows" / "deploy.yml").read_text())
    job = workflow["jobs"]["deploy"]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TASKTRACKER_", "VIRTUAL_ENV"))}
    base.update(HOME=str(home), CI="true", GITHUB_ACTIONS="true", GITHUB_RUN_ID="4242", GITHUB_REPOSITORY="team/task-tracker")
    job_env = {k: substitute(v, secrets, inputs) for k, v in job.get("env", {}).items()}
    results, failed = [], False
    for step in job["steps"]:
        if "run" not in step:
            continue
        env = {**base, **job_env, **{k: substitute(v, secrets, inputs) for k, v in step.get("env", {}).items()}}
        condition = step.get("if")
        if failed and condition != "always()":
            continue
        if condition and not evaluate(condition, env):
            continue
        out = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=project,
                             env=env, capture_output=True, text=True, timeout=900)
        results.append((step.get("name", step["run"][:30]), out))
        failed = failed or out.returncode != 0
    return results


@pytest.fixture(scope="module")
def workflow_project(tmp_path_factory):
    return copy_project(tmp_path_factory.mktemp("gha") / "project")


def secrets_for(sandbox, known_hosts: str) -> dict:
    return {
        "DEPLOY_HOST": sandbox.address, "DEPLOY_USER": sandbox.user, "DEPLOY_PORT": str(sandbox.port),
        "DEPLOY_SSH_KEY": (sandbox.dir / "id_ed25519").read_text(), "DEPLOY_KNOWN_HOSTS": known_hosts,
        "APP_ENV": sandbox.app_env("gha").read_text(),
    }


@pytest.mark.e2e
def test_deploy_workflow_steps_deploy_to_the_sandbox(sandbox, deployed, workflow_project, tmp_path):
    secrets = secrets_for(sandbox, (sandbox.dir / "known_hosts").read_text().strip())
    results = run_deploy_workflow(workflow_project, tmp_path, secrets)
    names = [name for name, _ in results]
    assert names == ["Install the deploy toolkit", "Build the dashboard", "SSH key and pinned host key", "Stack settings",
                     "Deploy", "Forget the key"]
    for name, out in results:
        assert out.returncode == 0, f"{name}:\n{out.stdout}\n{out.stderr}"
    deploy_out = dict(results)["Deploy"].stdout
    release = os.readlink(sandbox.home / "gha" / "current").split("/")[-1]
    assert f"Release {release} is live on deploy-target." in deploy_out
    with urllib.request.urlopen(sandbox.app_url("gha", "/api/version"), timeout=10) as res:
        assert json.loads(res.read())["release"] == release
    for value in (secrets["DEPLOY_SSH_KEY"].splitlines()[1], "POSTGRES_PASSWORD="):
        assert all(value not in out.stdout + out.stderr for _, out in results)
    assert not (tmp_path / ".ssh" / "deploy_key").exists() and not (workflow_project / ".env").exists()
    audit = (sandbox.home / "gha" / "audit.log").read_text()
    assert '"ci_run": "team/task-tracker#4242"' in audit


@pytest.mark.e2e
def test_deploy_workflow_with_a_wrong_host_key_fails_before_anything_changes(sandbox, deployed, workflow_project, tmp_path):
    before = sorted(p.name for p in (sandbox.home / "gha" / "releases").iterdir()) if (sandbox.home / "gha").exists() else []
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    keytype, key = other.with_suffix(".pub").read_text().split()[:2]
    secrets = secrets_for(sandbox, f"[{sandbox.address}]:{sandbox.port} {keytype} {key}")
    results = dict(run_deploy_workflow(workflow_project, tmp_path / "home", secrets))
    assert results["Deploy"].returncode != 0
    assert "does not match the one pinned" in results["Deploy"].stderr
    assert "Nothing was changed on the server." in results["Deploy"].stderr
    after = sorted(p.name for p in (sandbox.home / "gha" / "releases").iterdir()) if (sandbox.home / "gha").exists() else []
    assert after == before
    assert "Forget the key" in results  # runs even after a failure


def test_ci_runs_the_fast_tier_first_and_the_whole_suite_after_it():
    """The fast tier answers first; the whole suite (the README's test command) only after it passed."""
    jobs = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())["jobs"]
    runs = {name: " ".join(step.get("run", "") for step in job["steps"]) for name, job in jobs.items()}
    assert "bash scripts/test --fast" in runs["fast"] and "ruff check" in runs["fast"]
    assert jobs["test"]["needs"] == "fast"
    assert re.search(r"bash scripts/test\s*$", runs["test"].strip())
