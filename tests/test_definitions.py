"""The data and entry services kept through deploys (tasks/commands/definitions.py): the builders as
a string table, the pending-definitions program against a docker stand-in on PATH, the notice."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tasks.commands import compose, definitions, rollout, sh
from tasks.commands.context import HostContext

APP = HostContext("app", "tt")
V1 = HostContext("app", "tt", "v1")
SWARM = HostContext("app", "tt").with_engine("swarm")
D2 = "docker compose -p tt -f compose.yml -f docker-compose.production.yml -f release.yml"
D1 = ("docker-compose --compatibility -p tt -f compose.yml -f docker-compose.production.yml "
      "-f release.yml")

TABLE = [
    ("data services: created when missing, never recreated", sh(rollout.data_services_up(APP)),
     f"{D2} up -d --no-deps --no-recreate postgres nats"),
    ("the same on v1", sh(rollout.data_services_up(V1)),
     f"{D1} up -d --no-deps --no-recreate postgres nats"),
    ("nginx: created when missing, never recreated, reloaded", rollout.nginx_up_and_reload(APP),
     f"{D2} up -d --no-deps --no-recreate nginx 2>&1 | grep -v -e '^ *Container .* Running$' "
     f"-e 'is up-to-date' || true; {D2} exec -T nginx kill -HUP 1"),
    ("migrations start no dependency (v2 would recreate a changed one)", compose.migrate(APP),
     f"if [ -f compose.migrate.yml ]; then {D2} -f compose.migrate.yml run --rm --no-deps -T api "
     f"alembic upgrade head; else {D2} run --rm --no-deps -T api alembic upgrade head; fi"),
    ("compared on v2", " ".join(definitions.compared(APP)), "postgres nats nginx"),
    ("compared on v1 (its hash covers postgres's build directory)",
     " ".join(definitions.compared(V1)), "nats nginx"),
    ("pending on a swarm: its stack deploy decides", definitions.pending(SWARM, "app/current"),
     "true"),
    ("recreate command", definitions.recreate_command("vps", "postgres"),
     "fab -H vps compose.recreate --service postgres"),
]


@pytest.mark.parametrize(("name", "built", "expected"), TABLE, ids=[t[0] for t in TABLE])
def test_builders(name, built, expected):
    assert built == expected


def test_pending_reads_the_release_hashes_and_compares_labels():
    script = definitions.pending(APP, "app/releases/r1")
    assert script.startswith(f"( cd app/releases/r1 && {D2} config --hash postgres,nats,nginx "
                             "2>/dev/null ) | bash -c ")
    assert script.endswith(" pending-definitions tt")
    assert "config --hash nats,nginx " in definitions.pending(V1, "app/current")


def test_recreate_forces_only_the_named_services_and_waits_for_each():
    script = definitions.recreate(APP, ["postgres", "nginx"])
    assert script.splitlines()[:2] == ["set -e",
                                       f"{D2} up -d --no-deps --force-recreate postgres nginx"]
    assert script.count("for _ in $(seq 1 240)") == 2
    assert "'postgres did not become healthy'" in script and "'nginx did not become healthy'" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


FAKE_DOCKER = """#!/bin/bash
# docker ps -q --filter ...service=NAME...: the id in $FAKE_DIR/NAME.id (none: no container);
# docker inspect -f ... ID: the hash in $FAKE_DIR/ID.hash
if [ "$1" = ps ]; then
  for a in "$@"; do case "$a" in label=com.docker.compose.service=*) s=${a##*=} ;; esac; done
  cat "$FAKE_DIR/$s.id" 2>/dev/null; exit 0
fi
if [ "$1" = inspect ]; then cat "$FAKE_DIR/${!#}.hash"; exit 0; fi
exit 1
"""


def run_pending(tmp_path: Path, hashes: str, containers: dict[str, str]) -> list[str]:
    (tmp_path / "docker").write_text(FAKE_DOCKER)
    (tmp_path / "docker").chmod(0o755)
    for service, label in containers.items():
        (tmp_path / f"{service}.id").write_text(f"id-{service}\n")
        (tmp_path / f"id-{service}.hash").write_text(label + "\n")
    out = subprocess.run(["bash", "-c", definitions.PENDING_PROGRAM, "pending-definitions", "tt"],
                         input=hashes, capture_output=True, text=True, timeout=30,
                         env={"PATH": f"{tmp_path}:/usr/bin:/bin", "FAKE_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    return definitions.parse_pending(out.stdout)


@pytest.mark.parametrize(("hashes", "containers", "expected"), [
    ("postgres h1\nnats h2\nnginx h3\n", {"postgres": "h1", "nats": "h2", "nginx": "h3"}, []),
    ("postgres new\nnats h2\nnginx h3\n", {"postgres": "old", "nats": "h2", "nginx": "h3"},
     ["postgres"]),
    ("nginx x\npostgres y\nnats h2\n", {"postgres": "old", "nats": "h2", "nginx": "old"},
     ["postgres", "nginx"]),
    # no container: nothing to compare (the next deploy creates it with its definition)
    ("postgres h1\nnats h2\nnginx h3\n", {"postgres": "h1"}, []),
    # Compose could not read the release's definition: nothing is claimed
    ("", {"postgres": "h1"}, []),
], ids=["all current", "postgres changed", "two changed, stack order", "missing", "no hashes"])
def test_pending_program(tmp_path, hashes, containers, expected):
    assert run_pending(tmp_path, hashes, containers) == expected


def test_the_notice_names_the_service_what_it_runs_the_command_and_the_downtime():
    (line,) = definitions.notice("vps", "r2", ["postgres"])
    assert line.startswith("NOTICE: postgres's definition in release r2 differs")
    assert "left it running its previous definition" in line
    assert "`fab -H vps compose.recreate --service postgres`" in line
    assert f"unavailable for {definitions.UNAVAILABLE['postgres']}" in line
    assert "the rollback left" in definitions.notice("vps", "r1", ["nginx"], "rollback")[0]
    assert definitions.notice("vps", "r2", []) == []
