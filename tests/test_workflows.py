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


def test_deploy_runs_only_after_ci_passed_on_that_very_commit():
    ci = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    deploy = yaml.safe_load((ROOT / ".github" / "workflows" / "deploy.yml").read_text())
    assert "push" in triggers(ci)
    on = triggers(deploy)
    assert set(on) == {"workflow_run", "workflow_dispatch"}, "no push trigger: a push deploys only through CI"
    assert on["workflow_run"] == {"workflows": [ci["name"]], "types": ["completed"], "branches": ["main"]}
    job = deploy["jobs"]["deploy"]
    condition = " ".join(job["if"].split())
    for needed in ("github.event.workflow_run.conclusion == 'success'", "github.event.workflow_run.event == 'push'",
                   "github.event.workflow_run.head_branch == 'main'",
                   "github.event.workflow_run.head_repository.full_name == github.repository"):
        assert needed in condition, needed
    # Manual runs only roll back; they never deploy untested code.
    assert condition.startswith("github.event_name == 'workflow_dispatch' || (")
    assert on["workflow_dispatch"]["inputs"]["rollback_to"]["required"] is True
    checkout = next(step for step in job["steps"] if step.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["ref"] == "${{ github.event.workflow_run.head_sha || github.sha }}"


def test_deploy_job_runs_no_npm_install_scripts():
    """The job that later holds the deploy key runs `npm ci` (inside `invoke build`) without scripts."""
    job = yaml.safe_load((ROOT / ".github" / "workflows" / "deploy.yml").read_text())["jobs"]["deploy"]
    assert job["env"]["NPM_CONFIG_IGNORE_SCRIPTS"] == "true"
    names = [step.get("name") for step in job["steps"]]
    assert names.index("Build the dashboard") < names.index("SSH key and pinned host key")


def test_deploy_workflow_holds_no_deploy_logic_and_echoes_no_secret():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "deploy.yml").read_text())
    assert workflow["concurrency"]["cancel-in-progress"] is False
    job = workflow["jobs"]["deploy"]
    assert job["environment"] == "production"
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
    value = re.sub(r"\$\{\{\s*secrets\.(\w+)\s*\}\}", lambda m: secrets[m.group(1)], str(value))
    return re.sub(r"\$\{\{\s*inputs\.(\w+)\s*\}\}", lambda m: inputs.get(m.group(1), ""), value)


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
