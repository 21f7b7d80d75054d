"""Command builders as string tables: no SSH, no Docker."""

import pytest

from tasks.commands import chain, compose, release, sh, transfer
from tasks.commands import sandbox as sandbox_commands
from tasks.commands.context import HostContext
from tasks.deploy import new_release_id, parse_rsync_sent
from tasks.host import choose_compose, host_problem

V2 = HostContext("tasktracker", "tasktracker", "v2")
TT2 = HostContext("apps/tt", "tt", "v2")
TT1 = HostContext("apps/tt", "tt", "v1")

CASES = [
    ("compose up v2", sh(compose.up(V2)),
     "docker compose -p tasktracker -f compose.yml -f docker-compose.production.yml -f release.yml up -d --remove-orphans"),
    ("compose up v1", sh(compose.up(TT1)),
     "docker-compose --compatibility -p tt -f compose.yml -f docker-compose.production.yml -f release.yml up -d --remove-orphans"),
    ("compose down volumes", sh(compose.down(TT2, volumes=True)).split(" release.yml ")[1], "down --remove-orphans --volumes"),
    ("compose logs", sh(compose.logs(TT2, service="api", since="10m", follow=True, tail=50)).split(" release.yml ")[1],
     "logs --no-color --since 10m --tail 50 --follow api"),
    ("compose restart", sh(compose.restart(TT1, ["api", "worker"])).split(" release.yml ")[1], "restart api worker"),
    ("migrate", sh(compose.migrate(TT2)).split(" release.yml ")[1], "run --rm -T api alembic upgrade head"),
    ("build", sh(compose.build_backend(TT2)).split(" release.yml ")[1], "build api"),
    ("either", compose.either(TT2, compose.ps),
     "if docker compose version >/dev/null 2>&1; then docker compose -p tt -f compose.yml -f docker-compose.production.yml "
     "-f release.yml ps; else docker-compose --compatibility -p tt -f compose.yml -f docker-compose.production.yml -f release.yml ps; fi"),
    ("in current", release.in_current(TT2, "docker compose ps"),
     "if [ ! -e apps/tt/current ]; then echo 'no release deployed yet' >&2; exit 3; fi; cd \"$(readlink -f apps/tt/current)\" && docker compose ps"),
    ("in release", release.in_release(HostContext("/srv/my app", "tt"), "r1", "ls"), "cd '/srv/my app/releases/r1' && ls"),
    ("probe", release.probe("img:1", "http://127.0.0.1:80", ["/assets/a.js"], 60),
     'docker run --rm --network host -v "$PWD/tasks/probe.py:/probe.py:ro" --entrypoint python img:1 /probe.py http://127.0.0.1:80 60 /assets/a.js'),
    ("ssh", sh(transfer.ssh_command(port=2222, key_files=["/k"], known_hosts="/kh", config_file="/dev/null")),
     "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o ForwardAgent=no -o ServerAliveInterval=10 -o ServerAliveCountMax=3 -F /dev/null -p 2222 -i /k -o IdentitiesOnly=yes -o UserKnownHostsFile=/kh"),
    ("rsync", sh(transfer.rsync(["compose.yml", "nginx"], "u@h:app/r1/", ssh_command=["ssh", "-p", "22"], link_dest="../r0",
                             excludes=("*.pyc",), relative=True, delete=False)),
     "rsync -a --compress --checksum --whole-file --itemize-changes -e 'ssh -p 22' --relative --link-dest=../r0 '--exclude=*.pyc' --stats compose.yml nginx u@h:app/r1/"),
    ("chain", chain(["a", "b c"], ["d"]), "a 'b c' && d"),
    ("known_hosts", sandbox_commands.known_hosts_line("127.0.0.2", 2222, "ssh-ed25519 AAAA host"), "[127.0.0.2]:2222 ssh-ed25519 AAAA\n"),
]


@pytest.mark.parametrize("built, expected", [(b, e) for _, b, e in CASES], ids=[c[0] for c in CASES])
def test_builders(built, expected):
    assert built == expected


def test_preflight_parsing_and_host_problems():
    facts = release.parse_facts("user=deploy\ndocker=20.10.24 \ncompose_v2=2.40.3\nrsync=/usr/bin/rsync\ncurrent=\n")
    assert choose_compose(facts, "auto") == "v2" and choose_compose(facts, "v1") is None
    assert host_problem(facts, "vps", "auto") is None
    assert "Docker is not installed on vps" in host_problem({**facts, "docker": "missing"}, "vps", "auto")
    denied = {**facts, "docker": "permission denied while trying to connect to the Docker daemon socket"}
    assert "deploy cannot use Docker on vps" in host_problem(denied, "vps", "auto")
    assert "usermod -aG docker deploy" in host_problem(denied, "vps", "auto")
    assert "Docker Compose v1 is not available" in host_problem(facts, "vps", "v1")
    assert "rsync is not installed" in host_problem({**facts, "rsync": ""}, "vps", "auto")


def test_release_id_and_rsync_stats():
    from datetime import datetime, timezone

    assert new_release_id(datetime(2026, 11, 25, 17, 30, 5, tzinfo=timezone.utc), "ab12cd3-dirty") == "20261125T173005Z-ab12cd3dirty"
    assert parse_rsync_sent("Number of files: 3\nTotal bytes sent: 12,345\nTotal bytes received: 99\n") == 12345


def test_apt_mirror_is_read_from_sources():
    deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n" \
             "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n"
    assert sandbox_commands.apt_mirror(deb822) == "http://mirror.example/debian"
    assert sandbox_commands.apt_mirror("deb https://deb.nodesource.com/node_20.x nodistro main") is None
