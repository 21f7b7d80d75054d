"""The stack files, checked with the real tools: nginx, Compose v1 and v2, hadolint, uv, invoke."""

import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.helpers import ROOT, compose_v2_binary

# The plan's limits and reservations (vps-deployment-strategy.md, "Resource Analysis").
PLAN_LIMITS = {
    "postgres": ("2G", "2.0", "512M", "0.5"),
    "nats": ("512M", "0.5", "64M", "0.1"),
    "worker": ("2G", "2.0", "512M", "0.5"),
    "api": ("1G", "1.0", "256M", "0.25"),
    "dashboard": ("512M", "0.5", "128M", "0.1"),
    "nginx": ("256M", "0.5", "64M", "0.1"),
}
PRODUCTION_NGINX = ("128M", "0.3")
UNITS = {"M": 2**20, "G": 2**30}


def to_bytes(value) -> int:
    text = str(value)
    return int(text[:-1]) * UNITS[text[-1]] if text[-1] in UNITS else int(text)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the stack files with a .env from .env.example, as on a host."""
    d = tmp_path_factory.mktemp("stack")
    for name in ("compose.yml", "compose.override.yml", "docker-compose.production.yml"):
        shutil.copy(ROOT / name, d / name)
    for name in ("nginx", "backend", "frontend"):
        (d / name).symlink_to(ROOT / name)
    shutil.copy(ROOT / ".env.example", d / ".env")
    return d


COMPOSE_TOOLS = {
    "v1": ["/usr/bin/docker-compose", "--compatibility"],
    "v2": [compose_v2_binary()],
}


def compose_config(project, tool, *files):
    argv = [*COMPOSE_TOOLS[tool]]
    for f in files:
        argv += ["-f", f]
    out = subprocess.run([*argv, "config"], cwd=project, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


@pytest.mark.parametrize("tool", ["v1", "v2"])
def test_compose_files_validate(project, tool):
    def targets(config):
        return {v["target"] if isinstance(v, dict) else v.split(":")[1] for v in config["services"]["nginx"]["volumes"]}

    dev = compose_config(project, tool, "compose.yml", "compose.override.yml")
    assert set(dev["services"]) == set(PLAN_LIMITS)
    assert {"/etc/nginx/nginx.conf", "/srv/app/current/frontend/dist"} <= targets(dev)
    prod = compose_config(project, tool, "compose.yml", "docker-compose.production.yml")
    # Production nginx sees the app directory and runs the current release's config.
    assert {"/srv/app", "/etc/nginx/conf.d"} <= targets(prod)
    assert "/etc/nginx/nginx.conf" not in targets(prod)
    assert "/srv/app/current/nginx/nginx.conf" in prod["services"]["nginx"]["command"]
    assert "--workers" in prod["services"]["api"]["command"]


def test_production_runs_no_dashboard_container(project):
    """`config --services` lists only what `up` starts (profiles honoured) in v2; v1 reads the profile too."""
    out = subprocess.run([compose_v2_binary(), "-f", "compose.yml", "-f", "docker-compose.production.yml", "config", "--services"],
                         cwd=project, capture_output=True, text=True, check=True)
    assert "dashboard" not in out.stdout.split()
    assert "nginx" in out.stdout.split()
    v1 = compose_config(project, "v1", "compose.yml", "docker-compose.production.yml")
    assert v1["services"]["dashboard"]["profiles"] == ["development-only"]


def test_resource_limits_match_the_plan(project):
    for files, overrides in ((["compose.yml", "compose.override.yml"], {}), (["compose.yml", "docker-compose.production.yml"], {"nginx": PRODUCTION_NGINX})):
        config = compose_config(project, "v2", *files)
        for name, (mem, cpus, rmem, rcpus) in PLAN_LIMITS.items():
            if name not in config["services"]:
                continue
            res = config["services"][name]["deploy"]["resources"]
            mem, cpus = overrides.get(name, (mem, cpus))
            assert to_bytes(res["limits"]["memory"]) == to_bytes(mem), name
            assert float(res["limits"]["cpus"]) == float(cpus), name
            assert to_bytes(res["reservations"]["memory"]) == to_bytes(rmem), name
            assert float(res["reservations"]["cpus"]) == float(rcpus), name


def test_database_and_nats_are_published_on_loopback_only(project):
    config = compose_config(project, "v2", "compose.yml", "docker-compose.production.yml")
    for name in ("postgres", "nats"):
        for port in config["services"][name].get("ports", []):
            assert port["host_ip"] == "127.0.0.1", (name, port)
    assert config["services"]["nats"]["command"][:1] == ["--jetstream"]
    assert "8222" in config["services"]["nats"]["command"]
    for name in ("postgres", "nats", "api", "worker", "nginx"):
        assert config["services"][name]["healthcheck"]["test"], name
        assert config["services"][name]["restart"] == "unless-stopped"


def test_nginx_config_passes_nginx_t(tmp_path):
    conf = (ROOT / "nginx" / "nginx.conf").read_text()
    # Point the HTTPS include at the repository's conf.d, everything else as in the container.
    conf = conf.replace("/etc/nginx/conf.d/", f"{ROOT}/nginx/conf.d/")
    path = tmp_path / "nginx.conf"
    path.write_text(conf)
    shutil.copy(ROOT / "nginx" / "app-locations.conf", tmp_path / "app-locations.conf")
    out = subprocess.run(["nginx", "-t", "-c", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "syntax is ok" in out.stderr


def test_nginx_config_has_what_an_operator_expects():
    conf = (ROOT / "nginx" / "nginx.conf").read_text() + (ROOT / "nginx" / "app-locations.conf").read_text()
    for needle in ("server_tokens off;", "gzip on;", "resolver 127.0.0.11", "location ^~ /.well-known/acme-challenge/",
                   "location = /nginx-health", "location /ws", "proxy_set_header Upgrade $http_upgrade;",
                   "try_files $uri $uri/ /index.html;", 'add_header Cache-Control "no-cache";', "immutable"):
        assert needle in conf, needle
    # The API is reached through a variable, so Docker's DNS is asked again after a container is replaced.
    assert re.search(r"proxy_pass \$api_upstream;", conf)
    assert "proxy_pass http://api" not in conf


def test_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint", path=os.path.dirname(sys.executable))
    out = subprocess.run([hadolint, "backend/Dockerfile", "frontend/Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_frontend_dockerfile_build_stage_keeps_dev_dependencies():
    text = (ROOT / "frontend" / "Dockerfile").read_text()
    build_stage = text.split("AS build", 1)[1].split("FROM", 1)[0]
    run_lines = [line for line in build_stage.splitlines() if line.startswith("RUN")]
    assert "RUN npm ci" in run_lines and not any("--only=production" in line for line in run_lines)
    assert "AS development" in text and "AS production" in text


def test_backend_requirements_are_the_locked_export():
    out = subprocess.run(["uv", "export", "--only-group", "reference-backend", "--no-hashes", "--no-header", "--no-emit-project", "--frozen", "-q"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    assert (ROOT / "backend" / "requirements.txt").read_text() == out.stdout


def _listing(tool):
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), tool), "--list"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines()[2:] if line.strip() and line.startswith("  ") and not line.startswith("    ")]


def test_fab_and_invoke_list_the_same_tasks_each_with_summary_and_flag_help():
    from tasks import ns

    listed = _listing("fab")
    assert "build.frontend" in listed and listed == _listing("invoke")
    for name in ns.task_names:
        task = ns[name]
        assert task.__doc__ and task.__doc__.strip(), f"{name} has no docstring"
        import inspect

        params = [p for p in inspect.signature(task.body).parameters][1:]
        for p in params:
            assert p in task.help, f"{name} --{p} has no help"
