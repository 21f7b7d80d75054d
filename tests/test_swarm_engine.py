"""The engine choice and what a swarm changes in the host layer (tasks/swarm.py, HostContext's
container filter, the restore script): tables, and executors against a fake connection."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from tasks.commands import backup, tls
from tasks.commands import cluster as cluster_commands
from tasks.commands import release as release_commands
from tasks.commands import status as status_commands
from tasks.commands.context import HostContext
from tasks.host import Host, Release
from tasks.preflight import choose_engine
from tasks.health_checks import swarm_findings
from tasks.steps import StepFailed
from tasks.swarm import SwarmHost
from tasks import localhost, pipeline
from tasks.commands import fingerprint as fingerprints
from tasks.commands import images as image_commands
from tasks.settings import PROJECT_ROOT
from tests.test_executors import (BACKUP_OK, FACTS, RELEASES_BEFORE, SCHEMA_AT_0001, FakeConnection,
                                  _read_only, fail, ok, planning, settings)  # noqa: F401 (a fixture)

SWARM = HostContext("app", "tt", engine="swarm")
COMPOSE = HostContext("app", "tt")


@pytest.mark.parametrize("swarm, wanted, expected_engine, problem", [
    ("inactive/false", "auto", "compose", None),
    ("", "auto", "compose", None),  # an old Docker that prints nothing
    ("active/true", "auto", "swarm", None),
    ("active/true", "compose", "compose", None),  # ENGINE=compose: Compose even on a manager
    ("active/false", "auto", "swarm", "is a worker in a Docker Swarm"),
    ("inactive/false", "swarm", "swarm", "ENGINE=swarm, but vps is not in a Docker Swarm"),
    ("active/true", "swarm", "swarm", None),
], ids=["no-swarm", "old-docker", "manager", "compose-forced", "worker", "swarm-wanted-none", "swarm-wanted"])
def test_choose_engine(swarm, wanted, expected_engine, problem):
    engine, why = choose_engine({"swarm": swarm}, wanted, "vps")
    assert engine == expected_engine
    if problem is None:
        assert why is None
    else:
        assert problem in why and "ENGINE=compose" in why  # names the problem and a fix


def test_on_a_swarm_containers_are_the_stacks_tasks_on_this_node():
    assert SWARM.container("postgres") == ("docker ps -q --filter label=com.docker.stack.namespace=tt "
                                           "--filter label=com.docker.swarm.service.name=tt_postgres | head -n 1")
    assert "com.docker.compose.project=tt" in COMPOSE.containers("api")
    assert "com.docker.compose.oneoff=False" in COMPOSE.containers("api")


def container_function(script: str) -> str:
    start = script.index("container() {")
    return script[start:script.index("\n}\n", start) + 3]


@pytest.mark.parametrize("script", [backup.BACKUP_SCRIPT, status_commands.SAMPLER_SCRIPT], ids=["backup", "sampler"])
@pytest.mark.parametrize("running, expected", [("compose", "c0mp05e"), ("swarm", "5wa4m"), ("none", "")])
def test_the_host_side_scripts_find_a_compose_container_or_a_swarm_task(tmp_path, script, running, expected):
    """The installed programs (cron runs them) do not know the engine: they ask for both labels."""
    docker = tmp_path / "docker"
    docker.write_text("#!/bin/sh\n"
                      f"case \"$*\" in *compose.service=postgres*) [ {running} = compose ] && echo c0mp05e ;; "
                      f"*swarm.service.name=tt_postgres*) [ {running} = swarm ] && echo 5wa4m ;; esac; exit 0\n")
    docker.chmod(0o755)
    out = subprocess.run(["bash", "-c", container_function(script) + "PROJECT=tt; container postgres"], text=True,
                         capture_output=True, env={"PATH": f"{tmp_path}:/usr/bin:/bin"})
    assert out.stdout.strip() == expected, out.stderr


def test_the_status_snapshot_names_swarm_tasks_by_their_service():
    snap = status_commands.snapshot(SWARM)
    assert "docker ps -q --filter label=com.docker.stack.namespace=tt" in snap  # running tasks: a swarm keeps ended ones
    assert "{{slice (index .Config.Labels \"com.docker.swarm.service.name\") 3}}|" in snap  # tt_api -> api


def test_a_swarm_restore_scales_the_services_instead_of_stopping_containers():
    script = backup.restore(SWARM, "20261126T100000Z", "true")
    assert "swarm_scale tt_api=0 tt_worker=0\nswarm_wait 120 tt_api=0 tt_worker=0\n" in script
    assert "n_api=$(docker service inspect -f '{{.Spec.Mode.Replicated.Replicas}}' tt_api)\n" in script  # Go's braces, once
    assert 'if [ -n "${scaled:-}" ]; then swarm_scale tt_api=$n_api tt_worker=$n_worker' in script
    assert "swarm_scale tt_nats=0\n  swarm_wait 60 tt_nats=0\n" in script and "swarm_scale tt_nats=1\n" in script
    assert "swarm_wait 300 tt_api=$n_api tt_worker=$n_worker\n" in script
    # Scaled detached (the CLI's own wait adds each service's update monitor), then awaited here.
    assert re.findall(r"docker service scale.*", script) == ['docker service scale --detach "$@" >/dev/null; }']
    assert "docker stop" not in script and "docker start" not in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    compose = backup.restore(COMPOSE, "20261126T100000Z", "true")
    assert "docker service" not in compose and "docker stop -t 30" in compose


def test_a_swarm_checks_nginx_in_its_running_task():
    command = tls.nginx_test_running(SWARM, "r1")
    assert "com.docker.swarm.service.name=tt_nginx" in command
    assert command.endswith("docker exec \"$c\" nginx -t -q -c /srv/app/releases/r1/nginx/nginx.conf")


NODES = [{"id": "n1", "hostname": "vm1", "alias": "vps1", "role": "manager", "availability": "active", "state": "ready",
          "address": "10.0.0.1", "labels": {"tasktracker.data": "true"}},
         {"id": "n2", "hostname": "vm2", "alias": "vps2", "role": "worker", "availability": "drain", "state": "ready",
          "address": "10.0.0.2", "labels": {}}]


def test_swarm_findings_name_a_drained_node_and_a_short_service_but_not_an_old_rollback():
    services = {"tt_api": {"replicas": "2/2", "running": 2, "desired": 2, "update": "rollback_completed", "update_started": "t"},
                "tt_worker": {"replicas": "0/1", "running": 0, "desired": 1, "update": "", "update_started": ""}}
    found = swarm_findings({"nodes": NODES, "services": services, "tasks": []})
    assert [f.summary for f in found] == ["node vps2 is ready/drain", "the stack is waiting: tt_worker: 0/1 running"]
    assert swarm_findings({"nodes": NODES[:1], "services": {"tt_api": services["tt_api"]}, "tasks": []}) == []


STATUS_DONE = ("@@ nodes\n@@ services\n" + '{"Name":"tt_api","Replicas":"2/2","Image":"i"}' + "\n@@ updates\ntt_api\tcompleted\tT1\n")
STATUS_ROLLED_BACK = ("@@ nodes\n@@ services\n" + '{"Name":"tt_api","Replicas":"2/2","Image":"i"}'
                      + "\n@@ updates\ntt_api\trollback_completed\tT2\n")


def swarm_host(conn: FakeConnection) -> SwarmHost:
    host = SwarmHost.adopt(Host(conn, settings(COMPOSE_PROJECT="tt"), "v2", {**FACTS, "swarm": "active/true"}))
    host.engine, host.ctx = "swarm", host.ctx.with_engine("swarm")
    host.converge_seconds = 5
    return host


def test_activate_deploys_the_releases_stack_file_and_waits_for_it():
    conn = FakeConnection().on("@@ nodes", ok(STATUS_DONE))
    host = swarm_host(conn)
    with pytest.raises(StepFailed) as failed:  # the probe has no answer here: it is the step after the switch
        conn.on("probe.py", fail("", 1, "FAIL health"))
        host.activate(Release("r2", "tt-backend:b", previous="r1"))
    deploy = next(c for c in conn.commands if "docker stack deploy" in c)
    assert "test -f tasktracker/env/r2.stack/stack.yml" in deploy
    assert deploy.endswith("docker stack deploy --resolve-image never -c tasktracker/env/r2.stack/stack.yml tt")
    switch = next(c for c in conn.commands if "ln -sfn releases/r2" in c)
    assert "com.docker.swarm.service.name=tt_nginx" in switch and "kill -HUP 1" in switch
    assert failed.value.step == "health checks"


def test_a_rollback_by_swarm_during_activate_fails_the_step_and_says_why():
    conn = FakeConnection().on("@@ nodes", ok(STATUS_DONE), ok(STATUS_ROLLED_BACK))
    host = swarm_host(conn)
    with pytest.raises(StepFailed) as failed:
        host.activate(Release("r2", "tt-backend:b", previous="r1"))
    assert failed.value.step == "rolling update"
    assert "Swarm rolled the update back by itself (tt_api: update rollback completed)" in failed.value.detail
    assert not any("ln -sfn" in c for c in conn.commands)  # current never moved


def test_putting_back_after_a_rollback_by_swarm_waits_for_that_rollback_and_deploys_again_if_swarm_raced_it(
        monkeypatch):
    """The previous release goes back right after Swarm began rolling the failed update back: its
    stack deploy waits until that rollback is over (one under way refuses it, and its end is no
    failure of this one), and is run once more when Swarm changed a service meanwhile."""
    monkeypatch.setattr("tasks.swarm.time.sleep", lambda seconds: None)
    rolling_back = STATUS_ROLLED_BACK.replace("rollback_completed", "rollback_started")
    conn = FakeConnection().on("@@ nodes", ok(rolling_back), ok(rolling_back), ok(STATUS_ROLLED_BACK))
    conn.on("docker stack deploy", fail("", 1, "failed to update service tt_worker: Error response from daemon: "
                                                "rpc error: code = Unknown desc = update out of sequence"), ok())
    conn.on("probe.py", fail("", 1, "FAIL health"))  # the step after the switch: the end here
    host = swarm_host(conn)
    with pytest.raises(StepFailed) as failed:
        host.activate(Release("r1", "tt-backend:a", previous=""))
    commands = conn.commands
    deploys = [i for i, c in enumerate(commands) if "docker stack deploy" in c]
    states = [i for i, c in enumerate(commands) if "@@ nodes" in c]
    assert len(deploys) == 2 and len([i for i in states if i < deploys[0]]) == 3  # started, started, completed
    assert failed.value.step == "health checks"  # the stale rollback was not this deploy's failure


def test_a_worker_node_takes_no_stack_operation():
    conn = FakeConnection()
    host = swarm_host(conn)
    host.engine_problem = "vps is a worker in a Docker Swarm: stack operations run on a manager."
    with pytest.raises(Exception, match="worker in a Docker Swarm"):
        host.activate(Release("r2", "tt-backend:b"))
    assert conn.commands == []


def test_restore_to_a_time_is_refused_on_a_swarm_before_anything_runs():
    conn = FakeConnection()
    host = swarm_host(conn)
    with pytest.raises(StepFailed, match="not available on a swarm"):
        host.restore_to_time("2026-11-26 10:00:00")
    assert conn.commands == []


def test_pruning_a_swarm_release_removes_its_stack_files_too():
    assert release_commands.remove_releases(SWARM, ["r1"]) == ("rm -rf -- app/releases/r1 app/env/r1.env app/env/r1.stack; "
                                                               "echo 'pruned r1'")
    assert "r1.stack" not in release_commands.remove_releases(COMPOSE, ["r1"])


def test_a_swarm_release_is_recorded_pruned_and_sampled_once_its_checks_pass():
    rows = "".join(f"r{i}\t{{\"result\": \"ok\", \"previous\": \"r{i - 1}\"}}\n" for i in range(1, 8)) + "current=r7\n"
    conn = FakeConnection().on("printf '%s\\t%s\\n'", ok(rows))
    host = swarm_host(conn)
    release = Release("r9", "tt-backend:b", previous="r7")
    prune = release_commands.releases_to_prune(host.releases()[0] + [("r9", release.recorded("ok"))], "r9",
                                               host.settings.keep_releases)
    command = host.record_command(release, prune)
    assert '"result": "ok"' in command and "tt-backend" in command and "tt-postgres" in command
    # KEEP_RELEASES=5: r9 and the newest four (r7 to r4) stay; r1 to r3 go, with their stack files
    assert ("rm -rf -- " + " ".join(f"tasktracker/releases/r{i} tasktracker/env/r{i}.env tasktracker/env/r{i}.stack"
                                    for i in (1, 2, 3)) + ";") in command
    assert "tasktracker-sample" in command  # the metrics sampler, as after a single-host deploy


def run_restore(tmp_path, *, restore_fails: bool, good_sums: bool = True) -> tuple[int, list[str]]:
    """The swarm restore script against a stand-in `docker` that logs its calls: api at 2 replicas,
    worker at 1; pg_restore fails when asked."""
    app = tmp_path / "app"
    sets = app / "backups" / "S"
    sets.mkdir(parents=True)
    (sets / "database.dump").write_text("dump")
    (sets / "SHA256SUMS").write_text(subprocess.run(["sha256sum", "database.dump"], cwd=sets, capture_output=True, text=True).stdout
                                     if good_sums else "0" * 64 + "  database.dump\n")
    log = tmp_path / "docker.log"
    docker = tmp_path / "bin" / "docker"
    docker.parent.mkdir()
    docker.write_text(f"""#!/bin/sh
echo "$*" >> {log}
case "$*" in
  "service ls"*) printf 'tt_api 2/2\\ntt_worker 1/1\\ntt_nats 1/1\\n' ;;
  ps*) echo c1 ;;
  "service inspect"*tt_api) echo 2 ;;
  "service inspect"*tt_worker) echo 1 ;;
  "exec -i"*) {'exit 1' if restore_fails else 'cat >/dev/null'} ;;
esac
exit 0
""")
    docker.chmod(0o755)
    script = backup.restore(HostContext(str(app), "tt", engine="swarm"), "S", "true")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env={"PATH": f"{docker.parent}:/usr/bin:/bin"})
    calls = log.read_text().splitlines() if log.exists() else []
    return out.returncode, [c for c in calls if c.startswith("service scale")]


def test_a_failed_swarm_restore_scales_api_and_worker_back_to_what_they_were(tmp_path):
    code, scales = run_restore(tmp_path, restore_fails=True)
    assert code != 0
    assert scales == ["service scale --detach tt_api=0 tt_worker=0", "service scale --detach tt_nats=1",
                      "service scale --detach tt_api=2 tt_worker=1"]


def test_a_swarm_restore_that_fails_before_scaling_changes_no_replicas(tmp_path):
    code, scales = run_restore(tmp_path, restore_fails=False, good_sums=False)
    assert code != 0 and scales == []


def test_a_swarm_restore_scales_back_after_success(tmp_path):
    code, scales = run_restore(tmp_path, restore_fails=False)
    assert code == 0
    assert scales == ["service scale --detach tt_api=0 tt_worker=0", "service scale --detach tt_api=2 tt_worker=1"]


def test_a_swarm_restore_waits_for_the_tasks_to_stop_and_to_run_again(tmp_path):
    """Scaled detached, so the script waits itself: the worker's task still running on a node that
    is up holds the restore back; a task on a node that is down does not; api and worker are up
    again only once `docker service ls` counts all their replicas running."""
    app, state = tmp_path / "app", tmp_path / "state"
    sets = app / "backups" / "S"
    sets.mkdir(parents=True)
    state.mkdir()
    (sets / "database.dump").write_text("dump")
    (sets / "SHA256SUMS").write_text(subprocess.run(["sha256sum", "database.dump"], cwd=sets, capture_output=True,
                                                    text=True).stdout)
    log, docker = tmp_path / "docker.log", tmp_path / "bin" / "docker"
    docker.parent.mkdir()
    docker.write_text(f"""#!/bin/sh
echo "$*" >> {log}
bump() {{ n=$(cat {state}/$1 2>/dev/null || echo 0); echo $((n + 1)) > {state}/$1; echo $((n + 1)); }}
case "$*" in
  "node ls"*) printf 'cl1=Ready\\ncl3=Down\\n' ;;
  "service ls"*) if grep -q tt_api=2 {log} && [ "$(bump ls)" -gt 1 ]; then printf 'tt_api 2/2\\ntt_worker 1/1\\n'; else printf 'tt_api 1/2\\n'; fi ;;
  "service ps"*tt_api) printf 'cl1 Shutdown 2 seconds ago\\ncl3 Running 5 minutes ago\\n' ;;
  "service ps"*tt_worker) if [ "$(bump ps)" -gt 2 ]; then echo 'cl1 Shutdown now'; else echo 'cl1 Running 9 seconds ago'; fi ;;
  "service inspect"*tt_api) echo 2 ;;
  "service inspect"*tt_worker) echo 1 ;;
  "exec -i"*) echo restored >> {log}; cat >/dev/null ;;
  ps*) echo c1 ;;
esac
exit 0
""")
    docker.chmod(0o755)
    script = backup.restore(HostContext(str(app), "tt", engine="swarm"), "S", "true")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env={"PATH": f"{docker.parent}:/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    restored = calls.index("restored")
    assert [c for c in calls[:restored] if c.startswith("service ps") and c.endswith("tt_worker")] == \
        ["service ps --format {{.Node}} {{.CurrentState}} tt_worker"] * 3  # running, running, stopped
    started = calls.index("service scale --detach tt_api=2 tt_worker=1")
    assert sum(c.startswith("service ls") for c in calls[started:]) == 2  # 1/2 first, then 2/2
    assert "[restore] api and worker started" in out.stdout


def test_the_engine_holds_inside_an_audited_operation():
    """The guards that read the engine run inside `audited` (restore, ssl): it must not reset it."""
    conn = FakeConnection()
    host = swarm_host(conn)
    with pytest.raises(StepFailed, match="not available on a swarm"):
        with host.audited("restore"):
            assert host.engine == "swarm"
            host.restore_to_time("2026-11-26 10:00:00")
    assert not any("pgbackrest" in c for c in conn.commands)


@pytest.mark.parametrize("registry, ok_", [("registry.example.com:5000/team", True), ("10.0.0.1:5000", True),
                                           ("ghcr.io/acme/tasktracker", True), ("https://registry.example.com", False),
                                           ("Registry.Example.com", False), ("reg istry", False)])
def test_registry_setting(registry, ok_):
    if ok_:
        assert settings(REGISTRY=registry).registry == registry
    else:
        with pytest.raises(Exception, match="REGISTRY .* is not a registry like"):
            settings(REGISTRY=registry)


def test_with_a_registry_the_built_images_are_pushed_and_pulled_not_shipped():
    host = swarm_host(FakeConnection())
    assert not host.pulled("tt-backend:abc")
    host.settings = settings(COMPOSE_PROJECT="tt", REGISTRY="reg.example:5000/team")
    assert host.pulled("reg.example:5000/team/tt-backend:abc") and not host.pulled("nats:2.10-alpine")
    assert " ".join(cluster_commands.stack_deploy("tt", ["s.yml"], registry=True)) == \
        "docker stack deploy --resolve-image never --with-registry-auth -c s.yml tt"


class ShipTarget:
    """A host as `ship_images_to` sees one: a name, a connection's user and address, and the layer
    chains its `docker load` would skip (`layer_inventory`'s output)."""

    def __init__(self, name: str, has: tuple[str, ...] = (), zstd: bool = True):
        self.name = name
        inventory = ("driver=overlay2\n" + ("zstd=yes\n" if zstd else "")
                     + (json.dumps(list(has)) + "\n" if has else ""))
        ran = type("Result", (), {"ok": True, "stdout": inventory})()
        self.conn = type("Conn", (), {"user": "deploy", "host": name,
                                      "run": staticmethod(lambda command, **kw: ran)})()


BASE, APP = "sha256:" + "b" * 64, "sha256:" + "a" * 64


def write_save(path: Path) -> dict[str, bytes]:
    """A `docker save` of one image in Docker's legacy layout: a 3 MB base layer (random), the
    app's layer, the image's config and manifest.json; returns each file's bytes by name."""
    files = {"base/layer.tar": os.urandom(3_000_000), "app/layer.tar": b"app code",
             "cfg.json": json.dumps({"rootfs": {"diff_ids": [BASE, APP]}}).encode()}
    files["manifest.json"] = json.dumps([{"Config": "cfg.json", "RepoTags": ["tasktracker-backend:abc"],
                                          "Layers": ["base/layer.tar", "app/layer.tar"]}]).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return files


def fake_shipping(monkeypatch, tmp_path, fails: str = ""):
    """`docker save` writes a real save's layout (`write_save`) into its file or to stdout; each
    host's `docker load` is a local shell that unpacks what it receives into a file named after
    the host (or, for `fails`, exits 3; `fails="save"`: the save fails)."""
    import tasks.shipping as shipping

    made = {}
    def save(images, path=None):  # into `path`, or (nothing to leave out) to stdout
        made.update(write_save(Path(path or tmp_path / "saved.tar")))
        if fails == "save":
            return ["sh", "-c", "echo 'No such image: tasktracker-backend:abc' >&2; exit 1"]
        return ["true"] if path else ["cat", str(tmp_path / "saved.tar")]
    monkeypatch.setattr(shipping.image_commands, "save", save)
    monkeypatch.setattr(shipping.remote, "ssh_argv", lambda conn: [])

    def load(ssh_argv, destination, packed):
        name = destination.split("@")[1]
        if name == fails:
            return ["sh", "-c", "echo 'no space left on device' >&2; exit 3"]
        return ["sh", "-c", f"{shipping.image_commands.UNPACK[packed]} > {tmp_path}/{name}"]
    monkeypatch.setattr(shipping.image_commands, "ssh_load", load)
    return shipping.ship_images_to, made


def received(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


@pytest.mark.parametrize("zstd_on_cl3, packed", [(True, "zstd"), (False, "gzip")])
def test_one_save_is_streamed_to_every_node_that_lacks_the_images(monkeypatch, tmp_path, capsys,
                                                                  zstd_on_cl3, packed):
    ship, made = fake_shipping(monkeypatch, tmp_path)
    sent = ship([ShipTarget("cl2"), ShipTarget("cl3", has=(BASE,), zstd=zstd_on_cl3)],
                ["tasktracker-backend:abc"])
    assert sent > 3_000_000  # random bytes do not compress: the base went, for cl2
    assert received(tmp_path / "cl2") == made == received(tmp_path / "cl3")
    assert "shipped tasktracker-backend:abc to cl2, cl3: " in (out := capsys.readouterr().out)
    assert f"MB ({packed})" in out


def test_the_layers_every_node_has_are_not_sent(monkeypatch, tmp_path, capsys):
    """A code-only release: the nodes have the base layer (its chain), so only the app's goes."""
    ship, made = fake_shipping(monkeypatch, tmp_path)
    sent = ship([ShipTarget("cl2", has=(BASE,)), ShipTarget("cl3", has=(BASE, "sha256:other"))],
                ["tasktracker-backend:abc"])
    assert sent < 10_000
    for node in ("cl2", "cl3"):
        assert received(tmp_path / node) == {k: v for k, v in made.items() if k != "base/layer.tar"}
    assert "1 layer(s), 3 MB, already on cl2, cl3: not sent" in capsys.readouterr().out


def test_a_node_whose_load_fails_fails_the_step_by_its_name(monkeypatch, tmp_path):
    ship, made = fake_shipping(monkeypatch, tmp_path, fails="cl3")
    with pytest.raises(StepFailed) as failed:
        ship([ShipTarget("cl2"), ShipTarget("cl3")], ["tasktracker-backend:abc"])
    assert "to cl3 failed: no space left on device" in str(failed.value)
    assert received(tmp_path / "cl2") == made  # the other still got it whole


def test_when_every_load_fails_the_save_is_stopped_not_waited_on(monkeypatch, tmp_path):
    ship, _ = fake_shipping(monkeypatch, tmp_path, fails="cl2")
    with pytest.raises(StepFailed, match="to cl2 failed"):
        ship([ShipTarget("cl2")], ["tasktracker-backend:abc"])


def test_a_save_that_fails_is_named_not_the_loads_it_starved(monkeypatch, tmp_path):
    """A new host (nothing to leave out) gets the save straight from `docker save`'s stdout; when
    that fails, the step says so, not the load's "unexpected EOF"."""
    ship, _ = fake_shipping(monkeypatch, tmp_path, fails="save")
    with pytest.raises(StepFailed, match="docker save tasktracker-backend:abc failed here: "
                                         "No such image"):
        ship([ShipTarget("cl2")], ["tasktracker-backend:abc"])


# --- the swarm's dry run is what its deploy runs ---------------------------------------------------

MANAGER = ("n1\tvps\tmanager\tactive\tready\t10.0.0.1\t"
           + json.dumps({"tasktracker.alias": "vps", "tasktracker.data": "true"}) + "\n")
STACK_UP = ("@@ nodes\n" + MANAGER + "@@ services\n"
            + "".join(json.dumps({"Name": f"tt_{s}", "Replicas": "1/1", "Image": "i"}) + "\n"
                      for s in ("api", "nats", "nginx", "postgres", "worker"))
            + "@@ updates\n")


TLS_ISSUED = "ca 0123456789ab\npostgres 1123456789ab\nnats 2123456789ab\n"  # tasks/programs/tls-ca.sh


def manager_conn(images: list[str]) -> FakeConnection:
    """A swarm manager that is also the data node, with every image, its stack converged, r1 and
    r2 kept (r2 live) and the database one migration behind this checkout."""
    return (FakeConnection().on("@@ nodes", ok(STACK_UP))
            .on(re.compile(r"^docker image inspect .*have="), ok("".join(f"have={i}\n" for i in images)))
            .on('echo "known=', ok(SCHEMA_AT_0001)).on("--db-only", ok(BACKUP_OK))
            .on("printf '%s\\t%s\\n'", ok(RELEASES_BEFORE)).on("tt_postgres | head -n 1", ok("pg1\n"))
            .on(" tls-ca ", ok(TLS_ISSUED)))


def manager(conn: FakeConnection) -> SwarmHost:
    host = SwarmHost.adopt(Host(conn, settings(COMPOSE_PROJECT="tt", KEEP_RELEASES="2"), "v2",
                                {**FACTS, "swarm": "active/true", "current": "releases/r2",
                                 "current_meta": json.dumps({"fingerprint": "fp-old"})}))
    host.engine, host.ctx = "swarm", host.ctx.with_engine("swarm")
    host.converge_seconds, host.mesh = 5, False
    return host


def reads_only(command: str) -> bool:
    """The swarm deploy's reads: the manager's view, container lookups, besides the single host's."""
    return (command.startswith(("echo '@@ nodes'", "docker ps -q")) or _read_only(command)
            or command.endswith(" check postgres nats")  # the TLS certificates' fingerprints
            or command.startswith("printf 'swarm="))  # the manager's facts (IPVS, ESP)


def test_the_swarm_dry_run_plans_exactly_what_the_swarm_deploy_runs(planning, monkeypatch):  # noqa: F811
    """As for one host: the commands a swarm's `--dry-run` prints are the ones its deploy then runs
    against the manager, in the same order, with the files written over SFTP and the rsync."""
    monkeypatch.setattr(localhost, "ok", lambda argv: True)  # this machine has every image
    monkeypatch.setattr(fingerprints, "stack_fingerprint", lambda root, same: "fp-new")
    image, postgres = manager(FakeConnection()).release_images()
    images = [*image_commands.stack_images(PROJECT_ROOT), image, postgres]
    planned = pipeline.dry_run(manager(manager_conn(images)), None, skip_build=True)
    deploy_conn = manager_conn(images)
    host = manager(deploy_conn)
    outcome: dict = {}
    pipeline.run_deploy(host, pipeline.plan_deploy(host, None), outcome)
    assert outcome == {"release": "r3"}
    assert [p.command for p in planned if p.where == "vps"] == [
        c for c in deploy_conn.commands if not reads_only(c)]
    assert [p.command.split(" <- ")[0] for p in planned if p.where == "sftp"] == [
        path for path, _ in deploy_conn.uploads]
    assert [p.command for p in planned if p.where == "here"] == [
        f"cd {PROJECT_ROOT} && rsync ... tasktracker/releases/r3/"]
    steps = [p.step for p in planned]
    assert steps.index("migrate database") < steps.index("rolling update (docker stack deploy)")
    assert "rm -rf -- tasktracker/releases/r1" in planned[-1].command  # KEEP_RELEASES=2
    assert [call.get("dry_run") for call in planning] == [None]  # the deploy's rsync, not the plan's
