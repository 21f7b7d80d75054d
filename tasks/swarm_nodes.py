"""The swarm's nodes, mixed into `SwarmHost` (tasks/swarm.py): each node opened over SSH by the
alias it joined with, the data node (where Postgres runs), and a release's images on every node
that lacks them (pushed to REGISTRY, or `docker save | docker load` over SSH)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from fabric import Connection
from invoke import Exit

from . import localhost
from .commands import cluster as commands
from .commands import images as image_commands
from .commands import pitr as pitr_commands
from .commands import release as release_commands
from .remote import side_by_side
from .shipping import ship_images_to
from .host import Host
from .settings import PROJECT_ROOT
from .steps import StepFailed

if TYPE_CHECKING:
    from .host import Release


class SwarmNodes:
    """Mixed into `SwarmHost`, whose connection, settings, context and manager state it uses."""

    def node_hosts(self, nodes: list[dict], step: str) -> list[tuple[dict, Host]]:
        """Every node that is up, opened over SSH by the alias it joined with (this connection for
        the manager), side by side: each opening is a handshake and a round trip of facts."""
        wanted = [node for node in nodes if self.node_is_up(node, step)]
        return list(zip(wanted, side_by_side(lambda node: self.open_node(node, step), wanted),
                        strict=True))

    def node_is_up(self, node: dict, step: str) -> bool:
        """Whether the node can be reached (said when it is skipped); StepFailed when it has no
        alias to reach it by."""
        alias = node["alias"]
        if alias == self.name:
            return True
        if not alias:
            raise StepFailed(step, f"node {node['hostname']} has no {commands.LABEL_ALIAS} "
                                   "label, so it cannot be "
                                   f"reached over SSH: join it with cluster.init")
        if node["state"] != "ready" or node["availability"] == "drain":
            print(f"   {alias}: {node['state']}/{node['availability']}: skipped (gets images "
                  "when it is back: deploy again)")
            return False
        return True

    def open_node(self, node: dict, step: str) -> Host:
        alias = node["alias"]
        if alias == self.name:
            return self
        try:
            return Host.open(Connection(alias, config=self.conn.config), self.settings)
        except Exit as refused:
            raise StepFailed(step, f"node {alias} cannot be used: {refused.message}") from None

    def data_host(self, nodes: list[dict] | None = None) -> Host:
        """Where Postgres runs: this manager when its task is here, else the node labelled
        tasktracker.data (over SSH, by its alias); StepFailed when neither can be reached."""
        if self.probe_run(self.ctx.container("postgres")).stdout.strip():
            return self
        nodes = nodes if nodes is not None else self.state()["nodes"]
        data = [host for node, host in self.node_hosts(nodes, "data node")
                if node["labels"].get(commands.LABEL_DATA) == "true"]
        if not data:
            raise StepFailed("data node", f"Postgres does not run on {self.name} and no reachable "
                                          "node has the label "
                                          f"{commands.LABEL_DATA}=true (`cluster.status` shows the "
                                          "nodes)")
        return data[0]

    def ship_to_nodes(self, nodes: list[dict], images: list[str], built: list[tuple[str, Path]],
                      step: str = "images on every node") -> None:
        """Every node that lacks an image gets it over SSH (no registry): `docker save | docker
        load`; `built` (image, build directory) are built here first when this machine lacks
        them."""
        for image, context in built:
            if not localhost.ok(["docker", "image", "inspect", image]):
                print(f"   building {image} here", flush=True)
                result = localhost.run(image_commands.local_build(image, context), check=False)
                if result.returncode:
                    raise StepFailed(f"build {context.name} image here",
                                     result.stderr.strip()[-800:])
        pushed = [image for image, _ in built if self.pulled(image)]
        # side by side: each push compresses its layers, and one image's big layer left a core idle
        for image, took in zip(pushed, side_by_side(lambda i: self.push(i, step), pushed),
                               strict=True):
            print(f"   pushed {image} in {took:.1f}s (the nodes pull it)", flush=True)
        images = [i for i in images if not self.pulled(i)]
        lacking: dict[tuple[str, ...], list[Host]] = {}  # the nodes that lack the same images
        opened = [host for _node, host in self.node_hosts(nodes, step)]
        for host, present in zip(opened, side_by_side(lambda h: h.images_present(images), opened),
                                 strict=True):
            missing = [i for i in images if i not in present]
            if not missing:
                print(f"   {host.name}: has all {len(images)} images")
                continue
            absent = [i for i in missing if not localhost.ok(["docker", "image", "inspect", i])]
            if absent:
                raise StepFailed(step, f"{host.name} lacks {', '.join(absent)} and this machine "
                                       "does not have "
                                       f"{'it' if len(absent) == 1 else 'them'} to send: deploy "
                                       "again from a checkout of "
                                       "that release (its images are built here), or pick another "
                                       "release")
            lacking.setdefault(tuple(missing), []).append(host)
        for missing, hosts in lacking.items():
            ship_images_to(hosts, list(missing))  # one save, streamed to each of them at once

    def push(self, image: str, step: str) -> float:
        """`docker push` of a built image to REGISTRY; the seconds it took."""
        started = time.monotonic()
        result = localhost.run(image_commands.push(image), check=False)
        if result.returncode:
            raise StepFailed(step, f"docker push {image} failed: "
                                   f"{result.stderr.strip()[-500:]} (is this machine "
                                   f"logged in to {self.settings.registry}, and does "
                                   f"Docker trust it?); nothing on the swarm was changed")
        return time.monotonic() - started

    def pulled(self, image: str) -> bool:
        """Whether the nodes pull this image from REGISTRY rather than getting it over SSH."""
        return bool(self.settings.registry) and image.startswith(self.settings.registry + "/")

    def ensure_image(self, release: Release, step: str = "images on every node") -> None:
        """The release's images (backend, Postgres) on every node that is up."""
        stack_file = commands.stack_file(self.ctx, release.id)
        if not self.probe_run(f"test -f {commands.q(stack_file)}").ok:
            raise StepFailed(step, f"release {release.id} has no stack file "
                                   f"({commands.stack_file(self.ctx, release.id)}): it "
                                   "was not deployed to this swarm (a Compose release from before "
                                   "`cluster.init`?). Pick "
                                   f"a swarm release (`fab -H {self.name} releases`); nothing was "
                                   "changed")
        images = [release.image, *([release.postgres_image] if release.postgres_image else [])]
        self.ship_to_nodes(self.state()["nodes"], images, [], step)

    def ensure_archive(self, nodes: list[dict] | None = None) -> None:
        """pgBackRest's stanza (and first full backup) on the data node, where Postgres runs."""
        host = self.data_host(nodes)
        out = host.run(pitr_commands.ensure_stanza(host.ctx, host.ctx.container("postgres")),
                       "WAL archive", hide=True).stdout
        state = release_commands.parse_facts("\n".join(line[len("@@fact "):]
                                                       for line in out.splitlines()
                                                       if line.startswith("@@fact ")))
        print(f"   {host.name}: WAL archive {state.get('pitr', 'unknown')}")

    def dry_run_images(self, release: Release) -> list[tuple[str, list[str]]]:
        """Prints what the images step would do; (node, images it would get) for each node."""
        built = image_commands.built_images(PROJECT_ROOT, release.image, release.postgres_image)
        images = [*image_commands.stack_images(PROJECT_ROOT), *(i for i, _ in built)]
        for image, _ in built:
            if not localhost.ok(["docker", "image", "inspect", image]):
                print(f"   here: {image} would be built first")
            if self.pulled(image):
                print(f"   here: {image} would be pushed to {self.settings.registry} (the nodes "
                      "pull it)")
        images = [i for i in images if not self.pulled(i)]
        shipping: list[tuple[str, list[str]]] = []
        opened = [host for _node, host in self.node_hosts(self.state()["nodes"], self.images_step)]
        for host, present in zip(opened, side_by_side(lambda h: h.images_present(images), opened),
                                 strict=True):
            missing = [i for i in images if i not in present]
            print(f"   {host.name}: " + (f"would get {', '.join(missing)}" if missing
                                        else f"has all {len(images)} images"))
            if missing:
                shipping.append((host.name, missing))
        return shipping
