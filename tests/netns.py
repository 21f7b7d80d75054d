"""A network namespace of its own for a test program that must not see this machine's interfaces
change (tests/browser.py runs headless Chromium in one).

Chromium fails every request in flight with `net::ERR_NETWORK_CHANGED` when any interface on the
machine gains or loses an address, and on a test machine Docker adds and removes bridges all the
time for the other lane's stacks (a CI run failed so). In a namespace of its own the program sees
only its loopback, which never changes; `forward_in` and `forward_out` carry chosen TCP ports
between that loopback and this machine's, so the program reaches exactly the addresses a test
names. Needs root (CAP_SYS_ADMIN), as the end-to-end tiers do."""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class IsolatedNetwork:
    """A network namespace with only `lo` (up), held by a `sleep` process until `close()`, and a
    scratch directory (`dir`) removed with it."""

    def __init__(self):
        self.holder = subprocess.Popen(
            ["unshare", "--net", "sh", "-c", "ip link set lo up && echo up && exec sleep infinity"],
            stdout=subprocess.PIPE, text=True, start_new_session=True)
        if self.holder.stdout.readline().strip() != "up":
            self.holder.kill()
            raise RuntimeError("could not make a network namespace (`unshare --net` needs root)")
        self.path = f"/proc/{self.holder.pid}/ns/net"
        self._fd = os.open(self.path, os.O_RDONLY)
        self._open = threading.Lock()
        self._listeners: list[socket.socket] = []
        self.dir = Path(tempfile.mkdtemp(prefix="tt-netns-"))

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside the namespace."""
        return ["nsenter", f"--net={self.path}", *argv]

    def _socket_inside(self) -> socket.socket:
        """A TCP socket of the namespace: made by a thread that entered it (setns moves only the
        calling thread; the socket stays in the namespace it was made in)."""
        made: dict = {}

        def make():
            with self._open:  # close() waits: the descriptor is never reused under a setns
                if self._fd < 0:
                    made["error"] = OSError(9, "the test namespace is closed")
                    return
                entered = _libc.setns(self._fd, CLONE_NEWNET)
            if entered != 0:
                made["error"] = OSError(ctypes.get_errno(), "setns into the test namespace")
                return
            made["socket"] = socket.socket(socket.AF_INET, socket.SOCK_STREAM)

        thread = threading.Thread(target=make)
        thread.start()
        thread.join()
        if "error" in made:
            raise made["error"]
        return made["socket"]

    def forward_in(self, address: str, port: int) -> None:
        """Inside, `address:port` reaches this machine's `address:port`."""
        self._listen(self._socket_inside(), (address, port),
                     lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))

    def forward_out(self, port: int) -> None:
        """On this machine, 127.0.0.1:`port` reaches the namespace's 127.0.0.1:`port` (a server
        started inside, such as chromedriver; connections wait up to 20 s for it to listen)."""
        self._listen(socket.socket(socket.AF_INET, socket.SOCK_STREAM), ("127.0.0.1", port),
                     self._socket_inside)

    def _listen(self, listener: socket.socket, where: tuple[str, int], upstream) -> None:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(where)
        listener.listen(64)
        self._listeners.append(listener)
        threading.Thread(target=self._accept, args=(listener, where, upstream), daemon=True).start()

    def _accept(self, listener: socket.socket, where: tuple[str, int], upstream) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by close()
                return
            threading.Thread(target=_relay, args=(client, where, upstream), daemon=True).start()

    def close(self) -> None:
        for listener in self._listeners:
            listener.close()
        with self._open:
            os.close(self._fd)
            self._fd = -1
        self.holder.kill()
        self.holder.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _relay(client: socket.socket, where: tuple[str, int], upstream) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            server = upstream()
        except OSError:  # the namespace was closed while this connection waited
            client.close()
            return
        try:
            server.connect(where)
            break
        except OSError:
            server.close()
            if time.monotonic() > deadline:
                client.close()
                return
            time.sleep(0.1)
    back = threading.Thread(target=_copy, args=(server, client), daemon=True)
    back.start()
    _copy(client, server)
    back.join()
    client.close()
    server.close()


def _copy(source: socket.socket, target: socket.socket) -> None:
    """Bytes from `source` to `target` until `source` ends; then `target` is told no more comes
    (on an error both directions end)."""
    try:
        while data := source.recv(65536):
            target.sendall(data)
        target.shutdown(socket.SHUT_WR)
    except OSError:
        for end in (source, target):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

