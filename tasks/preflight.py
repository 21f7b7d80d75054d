"""What a host must offer before a task uses it, decided from its facts (read by `Host.open` in
one round trip): the Compose variant, the engine (Compose or Swarm), what refuses the host."""

from __future__ import annotations


def choose_compose(facts: dict[str, str], wanted: str) -> str | None:
    if wanted in ("auto", "v2") and facts.get("compose_v2"):
        return "v2"
    if wanted in ("auto", "v1") and facts.get("compose_v1"):
        return "v1"
    return None


def choose_engine(facts: dict[str, str], wanted: str, alias: str) -> tuple[str, str | None]:
    """(`compose` or `swarm`, a problem or None) from ENGINE and the host's `swarm` fact: auto is
    Swarm on a swarm manager and Compose outside a swarm; a swarm worker takes no stack
    operation."""
    state, _, manager = facts.get("swarm", "").partition("/")
    if wanted == "compose":
        return "compose", None
    if state == "active" and manager == "true":
        return "swarm", None
    if state == "active":
        return "swarm", (f"{alias} is a worker in a Docker Swarm: stack operations run on a "
                         "manager (`fab -H MANAGER ...`; "
                         "`cluster.status` lists the nodes), or set ENGINE=compose to run Compose "
                         "on this host alone.")
    if wanted == "swarm":
        return "swarm", (f"ENGINE=swarm, but {alias} is not in a Docker Swarm (`docker info` "
                         f"reports {state or 'nothing'}): "
                         f"form one with `fab -H {alias},OTHER... cluster.init`, or set "
                         "ENGINE=compose.")
    return "compose", None


def host_problem(facts: dict[str, str], alias: str, wanted: str) -> str | None:
    """A clear message when the host cannot take a deploy, else None."""
    user = facts.get("user", "the deploy user")
    docker = facts.get("docker", "missing")
    if docker == "missing":
        return (f"Docker is not installed on {alias}. Install Docker Engine with the Compose "
                "plugin "
                f"(`curl -fsSL https://get.docker.com | sh`), add {user} to the docker group "
                f"(`usermod -aG docker {user}`), and run the deploy again.")
    if not docker[:1].isdigit():
        return (f"{user} cannot use Docker on {alias} ({docker.strip()[:160]}). Start the Docker "
                "daemon "
                f"(`systemctl start docker`) and add {user} to the docker group (`usermod -aG "
                f"docker {user}`, then log in again), and run the deploy again.")
    if choose_compose(facts, wanted) is None:
        which = "Docker Compose" if wanted == "auto" else f"Docker Compose {wanted}"
        return (f"{which} is not available on {alias}. Install the Compose plugin "
                f"(`apt-get install docker-compose-plugin`) and run the deploy again.")
    if not facts.get("rsync"):
        return (f"rsync is not installed on {alias}. Install it (`apt-get install rsync`) and run "
                "the deploy again.")
    return None


def absolute_app_dir(facts: dict[str, str], app_dir: str) -> str:
    return app_dir if app_dir.startswith("/") else f"{facts.get('home', '').rstrip('/')}/{app_dir}"
