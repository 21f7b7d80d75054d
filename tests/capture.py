"""What crosses a test-made Docker network between VM-like hosts, captured on this machine with an
AF_PACKET socket (root; no tcpdump here): the frames on the host-side veth of every container on
the network (a Linux bridge's own device does not see what it switches between its ports). The
swarm's overlay traffic is VXLAN (UDP 4789) carrying the containers' own packets; `payloads` keeps
the TCP payload of every segment to or from the watched ports, inside VXLAN or not, as a packet
capture on the provider's network would show it."""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

ETH_P_ALL = 0x0003
VXLAN_PORT = 4789
CAP_BYTES = 64 << 20  # per port: enough for a rolling update's traffic


def bridge_ports(bridge: str) -> set[str]:
    """The interfaces enslaved to `bridge` (the host side of each container's veth)."""
    return {p.name for p in Path(f"/sys/class/net/{bridge}/brif").iterdir()}


def tcp_segments(frame: bytes, depth: int = 0):
    """(source port, destination port, payload) of the TCP segment in an Ethernet frame carrying
    IPv4, and of the one inside it when it is VXLAN (the overlay's encapsulation)."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    total = struct.unpack("!H", ip[2:4])[0]
    proto, body = ip[9], ip[ihl:total]
    if proto == 17 and len(body) >= 16 and depth == 0:  # UDP: the overlay's VXLAN
        if struct.unpack("!H", body[2:4])[0] == VXLAN_PORT:
            yield from tcp_segments(body[8 + 8:], depth + 1)
    elif proto == 6 and len(body) >= 20:
        sport, dport = struct.unpack("!HH", body[:4])
        offset = (body[12] >> 4) * 4
        yield sport, dport, body[offset:]


class Capture:
    """Frames on `bridge`'s ports while the block runs; `payloads[port]` the TCP payload bytes to or
    from each watched port; `vxlan` the number of overlay frames seen."""

    def __init__(self, bridge: str, ports: tuple[int, ...]):
        self.bridge, self.ports = bridge, ports
        self.payloads: dict[int, bytearray] = {p: bytearray() for p in ports}
        self.segments: dict[int, int] = dict.fromkeys(ports, 0)
        self.frames = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        ifaces = bridge_ports(self.bridge)
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        sock.settimeout(0.3)
        try:
            while not self.stop.is_set():
                try:
                    frame, addr = sock.recvfrom(65535)
                except TimeoutError:
                    continue
                if addr[0] not in ifaces or addr[2] == socket.PACKET_OUTGOING:  # each frame once
                    continue
                self.frames += 1
                for sport, dport, data in tcp_segments(frame):
                    for port in (sport, dport):
                        if port in self.payloads:
                            self.segments[port] += 1
                            if data and len(self.payloads[port]) < CAP_BYTES:
                                self.payloads[port] += data
        finally:
            sock.close()

    def __enter__(self) -> "Capture":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(5)
