"""Command builders as string tables: no SSH, no Docker."""

import subprocess
from pathlib import Path

import pytest

from tasks.commands import budget, chain, compose, images, offsite, release, sh, transfer
from tasks.commands import schema as schema_commands
from lab.commands import sandbox as sandbox_commands
from tasks.commands.context import HostContext
from tasks.commands.release import new_release_id
from tasks.pipeline import parse_rsync_sent
from tasks.preflight import choose_compose, host_problem
from tasks.rollback import backend_differs, format_releases

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
    # As the schema's owner (compose.migrate.yml); a release from before the app role has no such
    # file.
    ("migrate", compose.migrate(TT2),
     "if [ -f compose.migrate.yml ]; then docker compose -p tt -f compose.yml "
     "-f docker-compose.production.yml -f release.yml -f compose.migrate.yml run --rm --no-deps -T api alembic "
     "upgrade head; else docker compose -p tt -f compose.yml -f docker-compose.production.yml "
     "-f release.yml run --rm --no-deps -T api alembic upgrade head; fi"),
    ("build", sh(compose.build_backend(TT2)).split(" release.yml ")[1], "build api"),
    ("either", compose.either(TT2, compose.ps),
     "if docker compose version >/dev/null 2>&1; then docker compose -p tt -f compose.yml -f docker-compose.production.yml "
     "-f release.yml ps; else docker-compose --compatibility -p tt -f compose.yml -f docker-compose.production.yml -f release.yml ps; fi"),
    ("in current", release.in_current(TT2, "docker compose ps"),
     "if [ ! -e apps/tt/current ]; then echo 'no release deployed yet' >&2; exit 3; fi; cd \"$(readlink -f apps/tt/current)\" && docker compose ps"),
    ("in release", release.in_release(HostContext("/srv/my app", "tt"), "r1", "ls"), "cd '/srv/my app/releases/r1' && ls"),
    ("probe", release.probe("img:1", "http://127.0.0.1:80", ["/assets/a.js"], 60),
     'if command -v python3 >/dev/null 2>&1; then python3 tasks/probe.py http://127.0.0.1:80 60 /assets/a.js; else '
     'docker run --rm --network host -v "$PWD/tasks/probe.py:/probe.py:ro" --entrypoint python img:1 /probe.py '
     'http://127.0.0.1:80 60 /assets/a.js; fi'),
    # While `recover` keeps the entry in maintenance, from inside nginx (nginx/maintenance.conf).
    ("probe from the entry", release.probe_from_entry(TT2, "img:1", ["/assets/a.js"], 60),
     'docker run --rm --network "container:$(docker ps -q --filter label=com.docker.compose.project=tt '
     '--filter label=com.docker.compose.service=nginx --filter label=com.docker.compose.oneoff=False | head -n 1)" '
     '-v "$PWD/tasks/probe.py:/probe.py:ro" --entrypoint python img:1 /probe.py http://127.0.0.1:80 60 /assets/a.js'),
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


def test_a_standin_carries_its_recipe_and_a_changed_recipe_is_another_one(monkeypatch):
    """A stand-in built before SLIM (or any change to its packages, lines or base) is rebuilt."""
    name = "nats:2.10-alpine"
    before = sandbox_commands.standin_recipe(name)
    assert f"LABEL org.tasktracker.standin=1 org.tasktracker.standin.recipe={before}" \
        in sandbox_commands.standin_dockerfile(name)
    base = sandbox_commands.STANDIN_BASE
    assert f"org.tasktracker.standin.recipe={sandbox_commands.base_recipe(base)}'" \
        in sandbox_commands.docker_import(Path("/r"), base)
    suite, packages, after = sandbox_commands.STANDIN_BASES[base]
    monkeypatch.setitem(sandbox_commands.STANDIN_BASES, base, (suite, packages, after + " && true"))
    assert sandbox_commands.standin_recipe(name) != before  # the base changed: so did its stand-ins


# --- before a deploy changes anything: the memory budget, pending migrations, rsync's plan --------

ROOT = Path(__file__).resolve().parent.parent
GB = 1024 ** 3
MB = 1024 ** 2


@pytest.mark.parametrize("value, expected", [
    ("128M", 128 * MB), ("2G", 2 * GB), ("512m", 512 * MB), ("1.5g", int(1.5 * GB)), ("64MB", 64 * MB), ("100k", 102400),
    (1073741824, GB), ("1073741824", GB), ("300b", 300), (" 1 G ", GB),
])
def test_memory_sizes_in_compose_units(value, expected):
    assert budget.parse_memory(value) == expected


@pytest.mark.parametrize("value", ["lots", "1x", "-1G", "", True, "1.2.3M"])
def test_memory_sizes_that_are_not(value):
    with pytest.raises(ValueError, match="not a memory size"):
        budget.parse_memory(value)


def test_the_production_stack_as_the_deploy_starts_it():
    """compose.yml + the production override: no dashboard (a profile), nginx at the override's
    128M with compose.yml's 64M reservation kept (mappings merge), the API twice."""
    rows = [(s.name, s.reservation // MB, s.limit // MB) for s in budget.stack_memory(ROOT)]
    assert rows == [("postgres", 512, 2048), ("nats", 64, 512), ("worker", 512, 2048), ("api", 256, 1024),
                    ("api (new, during the switch)", 256, 1024), ("nginx", 64, 128)]


def test_tracing_reserves_its_memory_for_each_process_that_traces():
    """With LOGFIRE_TOKEN, each API worker process (in both API containers during the switch) and
    the job worker reserve TRACING_MEMORY more; the limits (the containers' caps) stay."""
    assert budget.traced_processes(False, 2) == {}
    traced = budget.stack_memory(ROOT, traced=budget.traced_processes(True, 2))
    rows = [(s.name, s.reservation // MB, s.limit // MB) for s in traced]
    extra = budget.TRACING_MEMORY // MB
    assert rows == [("postgres", 512, 2048), ("nats", 64, 512),
                    ("worker + tracing", 512 + extra, 2048),
                    ("api + tracing", 256 + 2 * extra, 1024),
                    ("api + tracing (new, during the switch)", 256 + 2 * extra, 1024),
                    ("nginx", 64, 128)]
    plain = budget.evaluate(budget.stack_memory(ROOT), int(7.5 * GB))
    more = budget.evaluate(traced, int(7.5 * GB)).reservations - plain.reservations
    assert more == 5 * budget.TRACING_MEMORY
    # A host the untraced stack just fits is refused once tracing's reservations are counted.
    host = plain.reservations + budget.OS_ALLOWANCE + budget.TRACING_MEMORY
    assert budget.evaluate(budget.stack_memory(ROOT), host).level != budget.REFUSE
    assert budget.evaluate(traced, host).level == budget.REFUSE


# MemTotal of real VMs sits below the size sold: the kernel keeps some (a "2 GB" VPS shows ~1.9 GiB).
@pytest.mark.parametrize("host_gib, level", [
    (1.9, budget.REFUSE),  # reservations 1.6 GiB > 1.9 - 0.5 for the system
    (2.0, budget.REFUSE),
    (3.8, budget.WARN),    # fits, but limits 6.6 GiB > 3.8 - 0.5 headroom
    (4.0, budget.WARN),
    (7.3, budget.WARN),    # limits 6.6 GiB > 7.3 - 0.73
    (7.5, budget.OK),      # the plan's 8 GB VPS, even with a generous kernel share
    (7.8, budget.OK),
    (16, budget.OK),
], ids=lambda v: str(v))
def test_the_plans_stack_against_host_sizes(host_gib, level):
    verdict = budget.evaluate(budget.stack_memory(ROOT), int(host_gib * GB))
    assert verdict.level == level
    assert (verdict.reservations // MB, verdict.limits // MB) == (1664, 6784)


def test_budget_reasons_and_table():
    services = [budget.ServiceMemory("db", 3 * GB, 4 * GB), budget.ServiceMemory("web", 0, 0)]
    refused = budget.evaluate(services, 2 * GB)
    assert refused.level == budget.REFUSE
    assert refused.reasons == (
        "the services reserve 3.0 GiB, more than the 1.5 GiB the host has for them (2.0 GiB less 512 MiB for the system)",
        "web has no memory limit and can take the whole host",
        "the limits add up to 4.0 GiB, more than 1.5 GiB (2.0 GiB less 512 MiB headroom): at peak the host runs out of memory "
        "before the services reach their limits")
    assert budget.table(refused).splitlines() == [
        "  service  reservation      limit",
        "  db           3.0 GiB    4.0 GiB",
        "  web                -       none",
        "  total        3.0 GiB    4.0 GiB",
        "  host memory 2.0 GiB: reservations may use 1.5 GiB, limits 1.5 GiB"]
    assert budget.evaluate(services[:1], 16 * GB).level == budget.OK
    assert budget.headroom(16 * GB) == int(1.6 * GB) and budget.headroom(2 * GB) == 512 * MB
    unknown = budget.evaluate(services, 0)
    assert unknown.level == budget.OK and budget.summary(unknown) == (
        "memory budget: the host's memory is unknown (no /proc/meminfo): not checked")


def test_budget_merges_overrides_and_skips_profiles(tmp_path):
    (tmp_path / "compose.yml").write_text(
        "x: &common {deploy: {resources: {limits: {memory: 1G}, reservations: {memory: 100M}}}}\n"
        "services:\n  a: {<<: *common}\n  b: {mem_limit: 300m, mem_reservation: 10m}\n"
        "  dev: {profiles: [dev], deploy: {resources: {limits: {memory: 9G}}}}\n"
        "  api: {deploy: {replicas: 2, resources: {limits: {memory: 256M}}}}\n")
    (tmp_path / "docker-compose.production.yml").write_text("services:\n  a: {deploy: {resources: {limits: {memory: 2G}}}}\n")
    rows = [(s.name, s.reservation // MB, s.limit // MB) for s in budget.stack_memory(tmp_path)]
    assert rows == [("a", 100, 2048), ("b", 10, 300), ("api (1/2)", 0, 256), ("api (2/2)", 0, 256),
                    ("api (new, during the switch)", 0, 256)]
    (tmp_path / "docker-compose.production.yml").write_text("services:\n  a: {deploy: {resources: {limits: {memory: lots}}}}\n")
    with pytest.raises(ValueError, match="service a: not a memory size: 'lots'"):
        budget.stack_memory(tmp_path)


def test_preflight_reports_the_hosts_memory():
    facts = release.parse_facts(subprocess.run(["bash", "-c", release.preflight(V2)], capture_output=True, text=True).stdout)
    assert facts["mem_total_kb"].isdigit() and int(facts["mem_total_kb"]) > 0


REVISIONS = {"a": (), "b": ("a",), "c": ("b",), "d": ("b",), "e": ("c", "d")}


@pytest.mark.parametrize("database, pending", [
    ("", ["a", "b", "c", "d", "e"]), ("<none>", ["a", "b", "c", "d", "e"]), ("a", ["b", "c", "d", "e"]), ("c", ["d", "e"]),
    ("c d", ["e"]), ("e", []), ("zz", None),
], ids=["no row", "fresh", "first", "one branch", "both branches", "head", "unknown"])
def test_pending_revisions(database, pending):
    assert schema_commands.pending_revisions(REVISIONS, database) == pending


def test_local_revisions_read_like_the_hosts_sed(tmp_path):
    """The checkout's migrations, read without importing them (a migration may import the app),
    agree with what schema_state's sed reads on the host."""
    versions = ROOT / "backend" / "alembic" / "versions"
    checkout = schema_commands.local_revisions(versions)
    assert checkout["0001"] == () and all(parents for rev, parents in checkout.items() if rev != "0001")
    sed = subprocess.run(["sh", "-c", f"sed -nE {release.q(schema_commands.REVISION_SED.format(name='revision'))} {versions}/*.py"],
                         capture_output=True, text=True).stdout.split()
    assert sorted(sed) == sorted(checkout)
    (tmp_path / "0002_x.py").write_text('"""x\n\nRevision ID: 0002\n"""\nrevision: str = \'0002\'\ndown_revision = "0001"\n')
    (tmp_path / "0003_m.py").write_text('revision = "0003"\ndown_revision = ("0002", "0001")\n')
    (tmp_path / "0001_a.py").write_text('revision = "0001"\ndown_revision: Union[str, None] = None\n')
    (tmp_path / "notes.txt").write_text('revision = "nope"\n')
    revisions = schema_commands.local_revisions(tmp_path)
    assert revisions == {"0001": (), "0002": ("0001",), "0003": ("0002", "0001")}
    sed = subprocess.run(["sh", "-c", f"sed -nE {release.q(schema_commands.REVISION_SED.format(name='revision'))} {tmp_path}/*.py"],
                         capture_output=True, text=True).stdout.split()
    assert sorted(sed) == sorted(revisions)


RSYNC_DRY_RUN = """created directory tasktracker/releases/r2
>f+++++++++ backend/alembic/versions/0002_add_due.py
>fcs....... nginx/nginx.conf
cd+++++++++ frontend/dist/assets/
>f+++++++++ frontend/dist/assets/index-9f8e.js
.d..t...... nginx/
cL+++++++++ link -> target

Number of files: 8 (reg: 4, dir: 4)
Number of regular files transferred: 3
Total file size: 1,050 bytes
Total transferred file size: 1,029 bytes
Total bytes sent: 331

sent 331 bytes  received 64 bytes  790.00 bytes/sec
total size is 1,050  speedup is 0.13 (DRY RUN)
"""


def test_rsync_itemized_plan():
    assert transfer.parse_itemized(RSYNC_DRY_RUN) == (
        ["backend/alembic/versions/0002_add_due.py", "nginx/nginx.conf", "frontend/dist/assets/index-9f8e.js"], 1029)
    assert transfer.parse_itemized("") == ([], 0)
    dry = sh(transfer.rsync(["compose.yml"], "u@h:app/r1/", ssh_command=["ssh"], link_dest="../r0", dry_run=True, delete=False))
    assert dry.endswith("--itemize-changes -e ssh --link-dest=../r0 --stats --dry-run compose.yml u@h:app/r1/")


@pytest.mark.parametrize("now, then, differs", [
    ({"backend_fingerprint": "b1", "backend_image": "i1"}, {"backend_fingerprint": "b1", "backend_image": "i1"}, False),
    ({"backend_fingerprint": "b1", "backend_image": "i1"}, {"backend_fingerprint": "b2", "backend_image": "i1"}, True),
    ({"backend_fingerprint": "b1", "backend_image": "i1"}, {"backend_fingerprint": "b1", "backend_image": "i2"}, True),
    ({}, {}, True),  # releases from before fingerprints: always the full path
], ids=["same backend", "settings changed", "image changed", "unknown"])
def test_rollback_replaces_the_backend_only_when_it_differs(now, then, differs):
    rows = [("r1", {**then, "result": "ok"}), ("r2", {**now, "result": "ok", "backend_release": "r1"})]
    assert backend_differs(rows, "r2", "r1") is differs
    listed = format_releases(rows, "r2")
    assert listed[0].endswith("api from") and listed[1].endswith(" itself") and listed[2].endswith(" r1")


# --- images over SSH: what a host's `docker load` can skip ----------------------------------------

RECORDED_INVENTORY = (  # `layer_inventory()` on a Debian 12 host (Docker 20.10), two images
    'driver=overlay2\n["sha256:b1","sha256:b2"]\n["sha256:b1","sha256:b2","sha256:a1"]\n')


@pytest.mark.parametrize("output, chains", [
    (RECORDED_INVENTORY, {("sha256:b1",), ("sha256:b1", "sha256:b2"),
                          ("sha256:b1", "sha256:b2", "sha256:a1")}),
    ("driver=overlay2\n", set()),                           # no image yet
    ('driver=overlayfs\n["sha256:b1"]\n', set()),           # containerd's store wants every blob
    ("", set()),
])
def test_the_layer_chains_a_host_has(output, chains):
    assert images.parse_layer_inventory(output) == chains


def test_a_layer_is_skipped_only_where_its_whole_chain_is_on_the_host():
    manifest = [{"Config": "c1.json", "Layers": ["b1/layer.tar", "b2/layer.tar", "new/layer.tar"]},
                {"Config": "c2.json", "Layers": ["b1/layer.tar", "x/layer.tar"]}]
    configs = {"c1.json": {"rootfs": {"diff_ids": ["sha256:b1", "sha256:b2", "sha256:n"]}},
               "c2.json": {"rootfs": {"diff_ids": ["sha256:b1", "sha256:x"]}}}
    chains = images.parse_layer_inventory(RECORDED_INVENTORY)
    assert images.layers_to_skip(manifest, configs, chains) == {"b1/layer.tar", "b2/layer.tar"}
    # the same diff id under another parent is another chain: sent
    configs["c1.json"]["rootfs"]["diff_ids"][0] = "sha256:other"
    assert images.layers_to_skip(manifest, configs, chains) == set()
    assert "--format '{{json .RootFS.Layers}}'" in images.layer_inventory()


@pytest.mark.parametrize("inventories, zstd_here, packed", [
    (["driver=overlay2\nzstd=yes\n", "driver=overlay2\nzstd=yes\n[]\n"], True, "zstd"),
    (["driver=overlay2\nzstd=yes\n", RECORDED_INVENTORY], True, "gzip"),  # one node has none
    (["driver=overlay2\nzstd=yes\n"], False, "gzip"),                     # this machine has none
    ([""], True, "gzip"),                                                   # the host did not say
    ([], True, "gzip"),
])
def test_a_save_travels_in_zstd_only_where_every_end_has_it(inventories, zstd_here, packed):
    assert images.codec(inventories, zstd_here) == packed


def test_a_host_unpacks_what_it_is_sent_into_docker_load():
    assert images.load("zstd") == "zstd -dcq | docker load"
    assert images.load() == "gunzip -c | docker load"
    assert "command -v zstd >/dev/null && echo zstd=yes" in images.layer_inventory()
    packed = subprocess.run(images.COMPRESS["zstd"], input=b"layer" * 1000, capture_output=True)
    unpacked = subprocess.run(["sh", "-c", images.UNPACK["zstd"]], input=packed.stdout,
                              capture_output=True)
    assert unpacked.stdout == b"layer" * 1000


# --- recover: what the set was made under, and whether this checkout is that commit -------------

HEAD = "ab12cd3" + "e" * 33


@pytest.mark.parametrize("release_id, commit", [
    ("20261125T173005Z-ab12cd3", "ab12cd3"),
    ("20261125T173005Z-ab12cd3dirty", "ab12cd3-dirty"),
    ("20261125T173005Z-nogit", ""),
    ("r1", ""),
    ("", ""),
])
def test_the_commit_in_a_release_id(release_id, commit):
    assert offsite.commit_of_release(release_id) == commit


@pytest.mark.parametrize("recorded, head, dirty, problem", [
    ("ab12cd3", HEAD, False, ""),
    ("ab12cd3e", HEAD, False, ""),  # a longer abbreviation of the same commit
    ("ab12cd3", HEAD, True, "this checkout is commit ab12cd3 with uncommitted changes"),
    ("ff00aa1", HEAD, False, "this checkout is commit ab12cd3"),
    ("ff00aa1", HEAD, True, "this checkout is commit ab12cd3 with uncommitted changes"),
    ("ab12cd3-dirty", HEAD, False, "the set's release was deployed from commit ab12cd3 with uncommitted changes, which no "
                                   "checkout can reproduce exactly"),
    ("", HEAD, False, "the set does not say which commit its release was deployed from"),
    ("unknown", HEAD, False, "the set does not say which commit its release was deployed from"),
    ("ab12cd3", "", False, "this directory is not a git checkout"),
])
def test_checkout_problem(recorded, head, dirty, problem):
    assert offsite.checkout_problem(recorded, head, dirty) == problem


@pytest.mark.parametrize("output, described", [
    ('OFFSITE NEWEST 20261126T020000Z\nOFFSITE SET 20261125T020000Z\n{"set": "20261125T020000Z", '
     '"release": "20261124T100000Z-ab12cd3", "commit": "ab12cd3", "created_at": "x"}\n',
     {"newest": "20261126T020000Z", "set": "20261125T020000Z", "release": "20261124T100000Z-ab12cd3", "commit": "ab12cd3"}),
    # a set made before the manifest named the commit: the release id's
    ('OFFSITE NEWEST 20261126T020000Z\nOFFSITE SET 20261126T020000Z\n{"release": "20261124T100000Z-ab12cd3dirty"}\n',
     {"newest": "20261126T020000Z", "set": "20261126T020000Z", "release": "20261124T100000Z-ab12cd3dirty",
      "commit": "ab12cd3-dirty"}),
    ("OFFSITE NEWEST 20261126T020000Z\nOFFSITE SET 20261126T020000Z\nnot json\n",
     {"newest": "20261126T020000Z", "set": "20261126T020000Z", "release": "", "commit": ""}),
    ("Fatal: wrong password\n", {}),
    ("OFFSITE NEWEST 20261126T020000Z\n", {}),
])
def test_parse_described(output, described):
    assert offsite.parse_described(output) == described


def test_kept_snapshots_are_listed_as_kept():
    text = ('[{"time": "t1", "short_id": "aa", "tags": ["tasktracker", "set=20261125T020000Z", "keep"]},'
            ' {"time": "t2", "short_id": "bb", "tags": ["tasktracker", "set=20261126T020000Z"]}]')
    assert [(r["set"], r["kept"]) for r in offsite.parse_snapshots(text)] == [
        ("20261125T020000Z", True), ("20261126T020000Z", False)]
