"""Docker Swarm builders and parsers (tasks/commands/cluster.py): string tables, no host."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tasks.swarm import STACK_SOURCES, load_sources
from tasks.commands import cluster, provision, swarm_stack, swarm_tls
from tasks.commands.context import HostContext
from tests.support import ROOT

CTX = HostContext("/home/deploy/tasktracker", "tasktracker")
VALUES = {"POSTGRES_PASSWORD": "pg$secret", "NATS_PASSWORD": "nats-pw", "BACKEND_IMAGE": "tasktracker-backend:abc",
          "RELEASE_ID": "r1", "APP_ROOT": "/home/deploy/tasktracker", "HTTP_PORT": "80",
          "HTTPS_PORT": "443", "APP_DB_USER": "tasktracker_app", "APP_DB_PASSWORD": "app$pw"}


@pytest.mark.parametrize("argv, expected", [
    (cluster.init("172.30.0.2"), "docker swarm init --advertise-addr 172.30.0.2"),
    (cluster.init("203.0.113.5", "10.0.0.5"), "docker swarm init --advertise-addr 203.0.113.5 --data-path-addr 10.0.0.5"),
    (cluster.join_token(), "docker swarm join-token -q worker"),
    (cluster.rotate_join_token(), "docker swarm join-token --rotate -q worker"),
    (cluster.label("n1", {"tasktracker.alias": "vps1", "tasktracker.data": "true"}),
     "docker node update --label-add tasktracker.alias=vps1 --label-add tasktracker.data=true n1"),
    (cluster.availability("abc123", "drain"), "docker node update --availability drain abc123"),
    (cluster.availability("abc123", "active"), "docker node update --availability active abc123"),
    (cluster.stack_deploy("tt", ["/a/1.yml", "/a/2.yml"]), "docker stack deploy --resolve-image never -c /a/1.yml -c /a/2.yml tt"),
    (cluster.migrate(CTX, "r1", "tt", "tt-backend:abc"),
     "docker run --rm --network tt_default --env-file /home/deploy/tasktracker/env/r1.stack/migrate.env tt-backend:abc "
     "alembic upgrade head"),
    (cluster.prepare_stack_dir(CTX, "r1"), "install -d -m 700 /home/deploy/tasktracker/env/r1.stack"),
], ids=["init", "init-data-path", "token", "rotate", "label", "drain", "activate", "stack-deploy", "migrate", "stack-dir"])
def test_builders(argv, expected):
    assert " ".join(argv) == expected


def test_an_unknown_availability_is_refused():
    with pytest.raises(ValueError):
        cluster.availability("n1", "off")


def test_the_join_token_travels_on_stdin_never_in_argv():
    """The join is the Engine API's, its request (with the token) read from stdin: what
    `docker swarm join --token T --advertise-addr 10.0.0.2 10.0.0.1:2377` sends."""
    assert json.loads(cluster.join_body("SWMTKN-1-secret", "10.0.0.1", "10.0.0.2")) == {
        "ListenAddr": "0.0.0.0:2377", "AdvertiseAddr": "10.0.0.2", "RemoteAddrs": ["10.0.0.1:2377"],
        "JoinToken": "SWMTKN-1-secret"}
    assert "SWMTKN" not in cluster.JOIN and "--data-binary @-" in cluster.JOIN
    # SWARM_DATA_PATH: the overlay's traffic from the node's private address
    assert json.loads(cluster.join_body("T", "10.0.0.1", "203.0.113.2", "10.0.0.2"))["DataPathAddr"] == "10.0.0.2"
    assert cluster.JOIN.endswith("--unix-socket /var/run/docker.sock -H 'Content-Type: application/json' "
                                 "--data-binary @- http://localhost/swarm/join")


def test_the_stack_files_are_the_only_sources_and_the_stack_lives_with_the_settings():
    assert STACK_SOURCES == ("compose.yml", "docker-compose.production.yml", "swarm.yml")
    assert cluster.stack_file(CTX, "r1", "data") == "/home/deploy/tasktracker/env/r1.stack/data.yml"


SWARM_ACTIVE = json.dumps({"LocalNodeState": "active", "ControlAvailable": True, "NodeID": "n1", "NodeAddr": "172.30.0.2",
                           "RemoteManagers": [{"NodeID": "n1", "Addr": "172.30.0.2:2377"}]})


@pytest.mark.parametrize("output, expected", [
    (f"swarm={SWARM_ACTIVE}\naddress=172.30.0.2\nfirst_address=172.30.0.2\nhostname=vm1\nipvs=no\n",
     {"state": "active", "manager": True, "node_id": "n1", "node_addr": "172.30.0.2", "managers": ["172.30.0.2:2377"],
      "address": "172.30.0.2", "hostname": "vm1", "ipvs": False, "esp": False, "live_restore": False, "data_address": ""}),
    ('swarm={"LocalNodeState":"inactive","ControlAvailable":false,"NodeID":"","NodeAddr":""}\naddress=\n'
     "first_address=10.1.2.3\nhostname=vps\nipvs=yes\nlive_restore=true\n",
     {"state": "inactive", "manager": False, "node_id": "", "node_addr": "", "managers": [], "address": "10.1.2.3",
      "hostname": "vps", "ipvs": True, "esp": False, "live_restore": True, "data_address": ""}),
    ("swarm=\naddress=\nhostname=x\n", {"state": "unknown", "manager": False, "node_id": "", "node_addr": "", "managers": [],
                                        "address": "", "hostname": "x", "ipvs": False, "esp": False, "live_restore": False,
                                        "data_address": ""}),
    ("swarm=\naddress=203.0.113.5\nhostname=x\ndata_address=10.0.0.5\n",
     {"state": "unknown", "manager": False, "node_id": "", "node_addr": "", "managers": [], "address": "203.0.113.5",
      "hostname": "x", "ipvs": False, "esp": False, "live_restore": False, "data_address": "10.0.0.5"}),
], ids=["manager", "not-in-a-swarm-address-from-hostname-I", "no-docker", "data-path"])
def test_parse_facts(output, expected):
    assert cluster.parse_facts(output) == expected


def test_live_restore_is_turned_off_as_root_and_reloaded_not_restarted():
    assert cluster.live_restore_off().startswith("sudo -n sh -c ")
    assert cluster.live_restore_off("0") == cluster.LIVE_RESTORE_OFF
    assert '"live-restore"] = False' in cluster.LIVE_RESTORE_OFF and "systemctl reload docker" in cluster.LIVE_RESTORE_OFF


def test_provision_keeps_the_live_restore_off_a_swarm_node_needs():
    swarm_node = '{"log-driver": "json-file", "log-opts": {"max-size": "10m", "max-file": "3"}, "live-restore": false}'
    assert provision.daemon_json_ok(swarm_node)
    assert not provision.daemon_json_ok('{"log-driver": "json-file"}')
    assert provision.wanted_daemon_json({})["live-restore"] is True


def test_the_facts_command_reads_the_default_routes_source_address():
    command = cluster.facts()
    assert "ip -4 route get" in command and "hostname -I" in command and "/proc/net/ip_vs" in command


STATUS = "\n".join([
    "@@ nodes",
    'n1\tvm1\tmanager\tactive\tready\t172.30.0.2\t{"tasktracker.alias":"vps1","tasktracker.data":"true","tasktracker.entry":"true"}',
    'n2\tvm2\tworker\tdrain\tready\t172.30.0.3\t{"tasktracker.alias":"vps2"}',
    "n3\tvm3\tworker\tactive\tdown\t172.30.0.4\tnull",
    "@@ services",
    '{"ID":"s1","Image":"tt-backend:abc","Mode":"replicated","Name":"tt_api","Ports":"","Replicas":"2/2"}',
    '{"ID":"s2","Image":"pgvector/pgvector:pg17","Mode":"replicated","Name":"tt_postgres","Replicas":"1/1 (max 1 per node)"}',
    '{"ID":"s3","Image":"tt-backend:abc","Mode":"replicated","Name":"tt_worker","Replicas":"0/1"}',
    "@@ updates",
    "tt_api\tcompleted",
    "tt_postgres\t",
    "tt_worker\tupdating",
    "@@ tasks",
    '{"CurrentState":"Running 2 minutes ago","Name":"tt_api.1","Node":"vm1","Image":"tt-backend:abc","Error":""}',
    '{"CurrentState":"Running 1 minute ago","Name":"tt_api.2","Node":"vm3","Image":"tt-backend:abc","Error":""}',
    '{"CurrentState":"Running 3 minutes ago","Name":"tt_postgres.1","Node":"vm1","Image":"pgvector/pgvector:pg17","Error":""}',
    '{"CurrentState":"Preparing 1 second ago","Name":"tt_worker.1","Node":"vm3","Image":"tt-backend:abc","Error":""}',
])


def test_parse_status():
    state = cluster.parse_status(STATUS)
    assert [(n["alias"], n["role"], n["availability"], n["state"]) for n in state["nodes"]] == [
        ("vps1", "manager", "active", "ready"), ("vps2", "worker", "drain", "ready"), ("", "worker", "active", "down")]
    assert state["nodes"][0]["labels"][cluster.LABEL_DATA] == "true"
    assert state["services"]["tt_postgres"]["running"] == 1 and state["services"]["tt_postgres"]["desired"] == 1
    assert state["services"]["tt_worker"]["update"] == "updating"
    assert cluster.tasks_per_node(state["tasks"]) == {"vm1": ["api.1", "postgres.1"], "vm3": ["api.2"]}


@pytest.mark.parametrize("services, wanted, expected", [
    ({"tt_api": {"replicas": "2/2", "running": 2, "desired": 2, "update": "completed"}}, None, ("done", [])),
    ({"tt_api": {"replicas": "1/2", "running": 1, "desired": 2, "update": ""}}, None, ("waiting", ["tt_api: 1/2 running"])),
    ({"tt_api": {"replicas": "2/2", "running": 2, "desired": 2, "update": "updating"}}, None, ("waiting", ["tt_api: update updating"])),
    ({"tt_api": {"replicas": "2/2", "running": 2, "desired": 2, "update": "rollback_completed"}}, None,
     ("failed", ["tt_api: update rollback completed"])),
    ({}, ["tt_postgres"], ("waiting", ["tt_postgres: not created yet"])),
    ({"tt_postgres": {"replicas": "1/1", "running": 1, "desired": 1, "update": ""},
      "tt_api": {"replicas": "0/2", "running": 0, "desired": 2, "update": ""}}, ["tt_postgres"], ("done", [])),
], ids=["done", "replicas-missing", "updating", "rolled-back", "not-created", "only-the-wanted-ones"])
def test_convergence(services, wanted, expected):
    assert cluster.convergence(services, wanted) == expected


ROLLED_BACK = {"replicas": "2/2", "running": 2, "desired": 2, "update": "rollback_completed", "update_started": "2026-11-26 10:00:00"}


@pytest.mark.parametrize("now, before, expected", [
    # the same rollback as when the deploy began: history (an unchanged spec keeps its old update state)
    (ROLLED_BACK, ROLLED_BACK, ("done", [])),
    # a rollback that started during this deploy: this deploy failed
    ({**ROLLED_BACK, "update_started": "2026-11-26 10:05:00"}, ROLLED_BACK, ("failed", ["tt_api: update rollback completed"])),
    ({**ROLLED_BACK, "update_started": "2026-11-26 10:05:00"}, {}, ("failed", ["tt_api: update rollback completed"])),
    # history, but short of replicas: still waiting
    ({**ROLLED_BACK, "replicas": "1/2", "running": 1}, ROLLED_BACK, ("waiting", ["tt_api: 1/2 running"])),
    # an update in progress is never history
    ({**ROLLED_BACK, "update": "updating"}, {**ROLLED_BACK, "update": "updating"}, ("waiting", ["tt_api: update updating"])),
], ids=["old-rollback", "new-rollback", "no-before", "old-rollback-short", "updating"])
def test_convergence_tells_this_deploys_rollback_from_an_earlier_one(now, before, expected):
    assert cluster.convergence({"tt_api": now}, None, {"tt_api": before} if before else None) == expected


def test_parse_status_reads_when_the_update_started():
    out = "@@ services\n" + '{"Name":"tt_api","Replicas":"2/2","Image":"i"}' + "\n@@ updates\ntt_api\trollback_completed\t2026-11-26 10:00:00 +0000 UTC\n"
    api = cluster.parse_status(out)["services"]["tt_api"]
    assert (api["update"], api["update_started"]) == ("rollback_completed", "2026-11-26 10:00:00 +0000 UTC")


@pytest.mark.parametrize("text, expected", [("2/3", (2, 3)), ("1/1 (max 1 per node)", (1, 1)), ("", (0, 0))])
def test_parse_replicas(text, expected):
    assert cluster.parse_replicas(text) == expected


@pytest.mark.parametrize("name, expected", [("vps2", "n2"), ("vm3", "n3"), ("n1", "n1"), ("nope", None)])
def test_find_node_by_alias_hostname_or_id(name, expected):
    node = cluster.find_node(cluster.parse_status(STATUS)["nodes"], name)
    assert (node or {}).get("id") == expected


@pytest.mark.parametrize("text, expected", [
    ("${A}", "a$$1"), ("${MISSING:-dflt}", "dflt"), ("${EMPTY:-dflt}", "dflt"), ("${EMPTY-dflt}", ""),
    ("$$HOME", "$$HOME"), ("x$A-y", "xa$$1-y"), ("${MISSING}", ""),
], ids=["braced-dollar-escaped", "default", "empty-default", "unset-only-default", "escaped-dollar-kept", "bare", "missing"])
def test_interpolate(text, expected):
    assert swarm_stack.interpolate(text, {"A": "a$1", "EMPTY": ""}) == expected


def test_interpolate_refuses_a_missing_required_value():
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD must be set"):
        swarm_stack.interpolate("${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}", {})


TLS_FINGERPRINTS = {"ca": "0123456789ab", "postgres": "1123456789ab", "nats": "2123456789ab"}


@pytest.fixture(scope="module")
def rendered():
    """The stack as a swarm deploy renders it: with TLS between the services (commands/swarm_tls.py)."""
    plain = swarm_stack.render_stack(load_sources(ROOT), VALUES, mesh=False)
    return swarm_tls.with_tls(plain, "tt", "/srv/tt/shared/tls-ca", TLS_FINGERPRINTS)


def test_the_rendered_stack_drops_what_docker_stack_deploy_rejects(rendered):
    assert rendered["version"] == "3.9"
    assert not [k for k in rendered if k.startswith("x-") or k == "name"]
    for name, service in rendered["services"].items():
        assert not set(service) & set(swarm_stack.DROPPED_KEYS), name
        assert "env_file" not in service
    assert "dashboard" not in rendered["services"]  # development only (a profile keeps it out of production)
    assert "${" not in yaml.safe_dump(rendered).replace("$${", "")


def test_files_merge_as_compose_merges_them(rendered):
    services = rendered["services"]
    api = services["api"]
    assert api["command"][:2] == ["uvicorn", "app.main:app"] and api["command"].count("uvicorn") == 1  # replaced, not appended
    assert "--proxy-headers" in api["command"]  # production's
    assert services["nginx"]["command"] == ["nginx", "-c", "/srv/app/current/nginx/nginx.conf", "-g", "daemon off;"]
    targets = [swarm_stack._mount_target(v) for v in services["nginx"]["volumes"]]
    assert targets.count("/var/www/certbot") == 1 and "/srv/app" in targets
    assert "/home/deploy/tasktracker/shared/acme:/var/www/certbot:ro" in services["nginx"]["volumes"]  # production's, not the named volume
    assert api["environment"]["WORKERS"] == "1" and api["environment"]["POSTGRES_HOST"] == "postgres"
    limits = services["nginx"]["deploy"]["resources"]["limits"]
    assert limits == {"memory": "128M", "cpus": "0.3", "pids": 256}


def test_the_stack_keeps_every_services_least_privilege(rendered):
    """What `docker stack deploy` applies of compose.yml's hardening: capabilities, the read-only
    root and its tmpfs mounts, and the pids limit (moved to format 3.9's place for it)."""
    services = rendered["services"]
    for name in ("postgres", "nats", "api", "worker", "nginx"):
        service = services[name]
        assert service["cap_drop"] == ["ALL"] and service["read_only"] is True, name
        assert service["deploy"]["resources"]["limits"]["pids"] > 0, name
        assert "/tmp" in [swarm_stack._mount_target(v) for v in service["volumes"]], name
    assert services["postgres"]["deploy"]["resources"]["limits"]["pids"] == 512
    assert "tmpfs" not in services["postgres"]  # a stack ignores the key: tmpfs volumes instead
    socket = {"type": "tmpfs", "target": "/var/run/postgresql", "tmpfs": {"size": 1048576}}
    assert socket in services["postgres"]["volumes"]
    assert services["nginx"]["cap_add"] == ["CHOWN", "DAC_READ_SEARCH", "SETGID", "SETUID"]
    assert not [name for name in ("api", "worker", "nats") if "cap_add" in services[name]]


def test_docker_20_10_accepts_the_rendered_stack(rendered, tmp_path):
    """Debian 12's Docker CLI (20.10, what `provision` installs) validates the stack file against
    its own schema before it talks to any daemon: here, one that does not exist."""
    cli = Path("/usr/bin/docker")
    version = cli.exists() and subprocess.run([str(cli), "--version"], capture_output=True,
                                              text=True).stdout
    if not version or "20.10" not in version:
        pytest.skip("no Debian docker.io (20.10) CLI at /usr/bin/docker (scripts/test has it)")
    stack = tmp_path / "stack.yml"
    stack.write_text(swarm_stack.dump_stack(rendered))
    nowhere = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock"}
    out = subprocess.run([str(cli), "stack", "deploy", "-c", str(stack), "tt"], capture_output=True,
                         text=True, timeout=60, env=nowhere)
    assert "Cannot connect to the Docker daemon" in out.stderr, out.stderr


def test_without_ipvs_every_service_is_dnsrr_and_nginx_publishes_in_host_mode(rendered):
    services = rendered["services"]
    assert {s["deploy"]["endpoint_mode"] for s in services.values()} == {"dnsrr"}
    assert services["nginx"]["ports"] == [{"target": 80, "protocol": "tcp", "mode": "host", "published": 80},
                                          {"target": 443, "protocol": "tcp", "mode": "host", "published": 443}]
    assert "ports" not in services["postgres"] and "ports" not in services["nats"]  # loopback-only ports: not in a swarm


def test_with_the_routing_mesh_ports_are_ingress_and_vips_stay():
    services = swarm_stack.render_stack(load_sources(ROOT), VALUES, mesh=True)["services"]
    assert all("endpoint_mode" not in s.get("deploy", {}) for s in services.values())
    assert {p["mode"] for p in services["nginx"]["ports"]} == {"ingress"}


def test_settings_reach_the_services_escaped_and_the_release_image_is_pinned(rendered):
    env = swarm_stack.service_environment(rendered, "postgres")
    assert env["POSTGRES_PASSWORD"] == "pg$secret" and env["POSTGRES_USER"] == "postgres"
    env = swarm_stack.service_environment(rendered, "api")
    assert env["POSTGRES_HOST"] == "postgres" and env["RELEASE_ID"] == "r1"
    services = rendered["services"]
    # the CLI reads `$$` as `$`
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pg$$secret"
    assert services["api"]["image"] == services["worker"]["image"] == "tasktracker-backend:abc"
    assert "$${NATS_USER:?is empty}" in services["nats"]["entrypoint"][2]  # the container's own `$` stays escaped


def test_swarm_yml_places_data_and_entry_and_rolls_start_first(rendered):
    swarm = rendered["services"]
    assert swarm["postgres"]["deploy"]["placement"]["constraints"] == ["node.labels.tasktracker.data == true"]
    assert swarm["nats"]["deploy"]["placement"]["constraints"] == ["node.labels.tasktracker.data == true"]
    assert swarm["nginx"]["deploy"]["placement"]["constraints"] == ["node.labels.tasktracker.entry == true"]
    assert swarm["api"]["deploy"]["replicas"] == 2
    assert swarm["api"]["deploy"]["update_config"]["order"] == "start-first"
    assert swarm["api"]["deploy"]["update_config"]["failure_action"] == "rollback"
    assert swarm["postgres"]["deploy"]["update_config"]["order"] == "stop-first"  # one Postgres per volume
    assert swarm["api"]["deploy"]["resources"]["limits"]["memory"] == "1G"  # compose.yml's, kept beside swarm.yml's
    assert rendered["networks"]["default"] == {"driver": "overlay", "attachable": True}


def test_only_services_keeps_the_data_services(rendered):
    data = swarm_stack.only_services(rendered, {"postgres", "nats"})
    assert set(data["services"]) == {"postgres", "nats"} and data["networks"] == rendered["networks"]
    assert "volumes" in data


def test_api_and_worker_connect_as_the_app_role_and_the_migration_as_the_owner(rendered):
    for service in ("api", "worker"):
        env = swarm_stack.service_environment(rendered, service)
        login = (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"])
        assert login == ("tasktracker_app", "app$pw"), service
        assert "pg$secret" not in env.values(), service  # the owner's password is not theirs
    migration = swarm_stack.migration_environment(rendered)
    assert (migration["POSTGRES_USER"], migration["POSTGRES_PASSWORD"]) == ("postgres", "pg$secret")
    assert migration["POSTGRES_HOST"] == "postgres" and migration["RELEASE_ID"] == "r1"


def test_the_swarm_stack_gets_the_role_the_settings_derive(tmp_path):
    from tasks.commands import db
    from tasks.release_env import env_values
    from tasks.settings import Settings

    settings = Settings.load(env_file=ROOT / ".env.example", environ={
        "POSTGRES_PASSWORD": "owner pw", "NATS_PASSWORD": "n", "TELEGRAM_BOT_TOKEN": "1:t",
        "OPENAI_API_KEY": "k"})
    values = {**env_values(settings, ROOT / ".env.example", "/srv/tt"), "BACKEND_IMAGE": "b:1",
              "RELEASE_ID": "r1"}
    stack = swarm_stack.render_stack(load_sources(ROOT), values, mesh=False)
    api = swarm_stack.service_environment(stack, "api")
    assert api["POSTGRES_USER"] == "tasktracker_app"
    assert api["POSTGRES_PASSWORD"] == db.app_role_password("owner pw") != "owner pw"
    assert swarm_stack.migration_environment(stack)["POSTGRES_PASSWORD"] == "owner pw"


def test_the_app_role_is_applied_once_as_the_owner_from_the_postgres_image():
    line = cluster.ensure_app_role(CTX, "r1", "tt", "tt-postgres:abc")
    assert line.startswith("docker run --rm -i --network tt_default --env-file "
                           "/home/deploy/tasktracker/env/r1.stack/migrate.env --entrypoint sh "
                           "tt-postgres:abc -c ")
    assert line.endswith("< /home/deploy/tasktracker/env/r1.stack/app-role.sql >/dev/null")
    # The password from the env file, never a command line.
    assert 'PGPASSWORD="$POSTGRES_PASSWORD" exec psql' in line


def test_the_migration_env_file_is_literal():
    assert swarm_stack.docker_env_file({"A": "x y", "B": "p$w"}) == "A=x y\nB=p$w\n"


def test_nginx_reload_targets_the_stacks_nginx_task():
    line = cluster.nginx_reload("tt")
    assert "label=com.docker.swarm.service.name=tt_nginx" in line and "kill -HUP 1" in line


def test_the_stack_file_quotes_what_yaml_1_1_reads_as_booleans(rendered):
    text = swarm_stack.dump_stack(rendered)
    assert "PGBACKREST_START_FAST: 'y'" in text and "PGBACKREST_LOG_LEVEL_FILE: 'off'" in text
    assert yaml.safe_load(text) == rendered
