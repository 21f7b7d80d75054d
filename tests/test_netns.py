"""tests/netns.py: the browser's network namespace sees only its loopback, and the forwarded ports
carry HTTP both ways (a server on this machine reached from inside; one inside reached from here)."""

import subprocess
import sys
import threading
import os
import time
from contextlib import contextmanager

import pytest

from tests.netns import IsolatedNetwork
from tests.support import free_port, port_open, wait_for

pytestmark = pytest.mark.integration


@contextmanager
def address_churn(every: float = 0.3):
    """For the length of the block, a link of this machine comes and goes every `every` seconds
    with an address, as Docker's bridges and veths do while the other lane's stacks come and go: a
    veth pair named by this process, removed at the end."""
    name = f"ttc{os.getpid() % 10**7}"
    stop = threading.Event()

    def ip(*args):
        subprocess.run(["ip", *args], capture_output=True)

    def churn():
        while not stop.is_set():
            ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p")
            ip("link", "set", name, "up")
            ip("link", "set", f"{name}p", "up")
            ip("addr", "add", "198.18.7.1/24", "dev", name)
            stop.wait(every / 2)
            ip("link", "del", name)
            stop.wait(every / 2)

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        ip("link", "del", name)


@pytest.fixture
def network():
    network = IsolatedNetwork()
    yield network
    network.close()


def http_server(argv_prefix: list[str], address: str, port: int) -> subprocess.Popen:
    return subprocess.Popen([*argv_prefix, sys.executable, "-m", "http.server", str(port), "--bind", address],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def curl(argv_prefix: list[str], url: str) -> str:
    out = subprocess.run([*argv_prefix, "curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", url],
                         capture_output=True, text=True)
    return out.stdout + out.stderr


def test_the_namespace_has_only_its_loopback(network):
    links = subprocess.run(network.command(["ip", "-brief", "link"]), capture_output=True, text=True,
                           check=True).stdout.split("\n")
    assert [line.split()[0] for line in links if line] == ["lo"]
    host_links = subprocess.run(["ip", "-brief", "link"], capture_output=True, text=True).stdout
    assert len(host_links.splitlines()) > 1  # this machine has more: they are not seen inside


def test_a_port_forwarded_in_reaches_this_machine_and_others_do_not(network):
    port, other = free_port(), free_port()
    servers = [http_server([], "127.0.0.3", p) for p in (port, other)]
    try:
        wait_for(lambda: port_open(port, "127.0.0.3") and port_open(other, "127.0.0.3"), 10, what="servers")
        network.forward_in("127.0.0.3", port)
        assert curl(network.command([]), f"http://127.0.0.3:{port}/") == "200"
        assert curl(network.command([]), f"http://127.0.0.3:{other}/").startswith("000")
    finally:
        for server in servers:
            server.kill()


def test_a_port_forwarded_out_reaches_a_server_that_starts_inside_later(network):
    port = free_port()
    network.forward_out(port)
    started = []

    def start_later():
        time.sleep(1)
        started.append(http_server(network.command([]), "127.0.0.1", port))

    thread = threading.Thread(target=start_later)
    thread.start()
    try:
        assert curl([], f"http://127.0.0.1:{port}/") == "200"  # waits for the server inside
    finally:
        thread.join()
        for server in started:
            server.kill()


def link_events(argv_prefix: list[str], seconds: float) -> str:
    """What `ip monitor` prints about links and addresses within `seconds`."""
    monitor = subprocess.Popen([*argv_prefix, "ip", "monitor", "link", "address"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    time.sleep(seconds)
    monitor.terminate()
    return monitor.communicate()[0]


def test_links_coming_and_going_on_this_machine_are_not_seen_inside(network):
    """What Chromium's network-change notifier listens to (netlink link and address events) stays
    silent inside while this machine's links change, as Docker's do for the other lane."""
    with address_churn(every=0.2):
        events = [""] * 2
        threads = [threading.Thread(target=lambda i=i, p=p: events.__setitem__(i, link_events(p, 2)))
                   for i, p in enumerate(([], network.command([])))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    outside, inside = events
    assert "198.18.7.1" in outside  # the churn is seen where it happens
    assert inside == ""
