"""TLS on every Postgres and NATS connection of a swarm (issue 24; docs/several-hosts.md, "Traffic
between hosts"): on a swarm those connections cross hosts, over an overlay that this toolkit cannot
assume encrypted. The manager keeps a small CA (`APP_DIR/shared/tls-ca`, tasks/programs/tls-ca.sh)
that issues a server certificate for each of the service names the clients use; `with_tls` gives
the rendered stack:

    postgres   its certificate and key as Docker secrets, `ssl=on`, and a pg_hba that accepts
               network logins over TLS only (`hostssl`; the socket and loopback as before)
    nats       its certificate and key, `--tls` (every client must use TLS)
    api, worker  the CA only, `PGSSLMODE=verify-full` with `PGSSLROOTCERT` (libpq reads both) and
               `NATS_URL=tls://nats:4222` with `NATS_TLS_CA` (backend/app/config.py)

Each secret's name carries its certificate's fingerprint: Docker secrets cannot change, so a new
certificate is a new secret, and `docker stack deploy` rolls the services onto it (stop-first for
the data services, start-first for the rest). The one-off migration and app-role containers mount
the CA file (`one_off_args`). Nothing here opens a connection.
"""

from __future__ import annotations

from . import q
from .programs import program

TLS_PROGRAM = program("tls-ca.sh")
SERVERS = ("postgres", "nats")
CLIENTS = ("api", "worker")
SECRETS = "/run/secrets"
CA_FILE = f"{SECRETS}/tasktracker-ca.pem"
PG_RUN = "/var/run/postgresql"  # postgres's own tmpfs: the key it may read, and its pg_hba
NATS_URL = "tls://nats:4222"

# What Postgres accepts: the socket and loopback as the image's initdb set them up, and from the
# network only TLS (no `host` line: a login without TLS finds no entry and is refused).
PG_HBA = ("local all all trust", "local replication all trust",
          "host all all 127.0.0.1/32 scram-sha-256", "host all all ::1/128 scram-sha-256",
          "hostssl all all all scram-sha-256")

# Postgres wants its key owned by the server's user (uid 999 upstream, 100 in a Debian build) with
# mode 0600; a secret's owner is fixed in the stack. So the entrypoint, still root, copies the key
# into the socket's tmpfs for `postgres` and writes pg_hba there, then runs the image's entrypoint.
PG_ENTRYPOINT = (
    f"install -o postgres -g postgres -m 600 {SECRETS}/postgres.key {PG_RUN}/server.key\n"
    f"printf '%s\\n' {' '.join(q(line) for line in PG_HBA)} > {PG_RUN}/pg_hba.conf\n"
    f"chown postgres:postgres {PG_RUN}/pg_hba.conf\n"
    'exec docker-entrypoint.sh "$$@"\n')
PG_FLAGS = ("ssl=on", f"ssl_cert_file={SECRETS}/postgres.pem",
            f"ssl_key_file={PG_RUN}/server.key", f"hba_file={PG_RUN}/pg_hba.conf")
NATS_FLAGS = ("--tls", "--tlscert", f"{SECRETS}/nats.pem", "--tlskey", f"{SECRETS}/nats.key")


def tls_dir(app_dir: str) -> str:
    """The CA's directory on the manager (`app_dir` absolute: secrets and mounts need it so)."""
    return f"{app_dir}/shared/tls-ca"


def ca_command(directory: str, mode: str) -> str:
    """tls-ca.sh on the manager: `check` (read-only), `ensure` or `rotate`."""
    if mode not in ("check", "ensure", "rotate"):
        raise ValueError(f"mode must be check, ensure or rotate (got {mode!r})")
    return f"sh -c {q(TLS_PROGRAM)} tls-ca {q(directory)} {mode} {' '.join(SERVERS)}"


def parse_fingerprints(output: str) -> dict[str, str]:
    """{'ca': fp, 'postgres': fp, 'nats': fp} from tls-ca.sh; 'renew' for one that needs issuing,
    and a name missing from the output counts as 'renew'."""
    found = dict(line.split(None, 1) for line in output.splitlines() if len(line.split()) == 2)
    return {name: found.get(name, "renew").strip() for name in ("ca", *SERVERS)}


def ready(fingerprints: dict[str, str]) -> bool:
    return all(v not in ("", "renew") for v in fingerprints.values())


def _secret(source: str, target: str, mode: int) -> dict:
    return {"source": source, "target": target, "mode": mode}


def with_tls(rendered: dict, stack: str, directory: str, fingerprints: dict[str, str]) -> dict:
    """The rendered stack with TLS between the services (module docstring). `fingerprints` name
    the secrets ('renew' while the CA has not issued them yet: a dry run's or a fingerprint's
    stack, never deployed)."""
    services = {name: dict(s) for name, s in rendered["services"].items()}
    secrets = {"tls_ca": {"file": f"{directory}/ca.pem",
                          "name": f"{stack}_tls_ca_{fingerprints['ca']}"}}
    for server in SERVERS:
        for kind in ("pem", "key"):
            secrets[f"tls_{server}_{kind}"] = {
                "file": f"{directory}/{server}.{kind}",
                "name": f"{stack}_tls_{server}_{kind}_{fingerprints[server]}"}
        if server in services:
            services[server]["secrets"] = [_secret(f"tls_{server}_pem", f"{server}.pem", 0o444),
                                           _secret(f"tls_{server}_key", f"{server}.key", 0o400)]
    if "postgres" in services:
        pg = services["postgres"]
        pg["entrypoint"] = ["sh", "-ec", PG_ENTRYPOINT, "postgres-tls"]
        flags = [arg for flag in PG_FLAGS for arg in ("-c", flag)]
        pg["command"] = [*(pg.get("command") or ["postgres"]), *flags]
    if "nats" in services:
        services["nats"]["command"] = [*(services["nats"].get("command") or []), *NATS_FLAGS]
    for client in CLIENTS:
        if client in services:
            service = services[client]
            service["secrets"] = [_secret("tls_ca", "tasktracker-ca.pem", 0o444)]
            service["environment"] = {**(service.get("environment") or {}),
                                      "PGSSLMODE": "verify-full", "PGSSLROOTCERT": CA_FILE,
                                      "NATS_URL": NATS_URL, "NATS_TLS_CA": CA_FILE}
    return {**rendered, "services": services, "secrets": secrets}


def with_encrypted_overlay(rendered: dict) -> dict:
    """The stack's overlay network with Swarm's IPsec (ESP between the nodes, keys rotated by the
    managers): applied when the network is created, not to one that exists."""
    networks = dict(rendered.get("networks") or {})
    default = dict(networks.get("default") or {})
    networks["default"] = {**default, "driver_opts": {**(default.get("driver_opts") or {}),
                                                      "encrypted": ""}}
    return {**rendered, "networks": networks}


def one_off_args(directory: str) -> list[str]:
    """`docker run` arguments that give a one-off container on the stack's network (migrations,
    the app role's psql) the CA where the services have it; their environment (the API's) already
    asks for verify-full."""
    return ["-v", f"{directory}/ca.pem:{CA_FILE}:ro"]
