"""The memory budget: the production stack's memory reservations and limits against the host's
memory (the plan's own arithmetic), decided before a deploy changes anything.

The stack is `compose.yml` merged with `docker-compose.production.yml`, as the deploy starts it:
services with `profiles` are left out (the deploy enables none: the dashboard dev server), and
the API counts twice, because during the zero-downtime switch the new API container runs beside
the old one (`--scale api=2`). The rules:

- **refused** when the reservations (what the services are promised) exceed the host's memory
  minus `OS_ALLOWANCE` (kernel, sshd, dockerd, containerd): the stack cannot fit, and an
  over-committed host OOM-kills a service (Postgres, mid-write) instead of failing the deploy;
- **warning** when the limits (what the services may take at peak) exceed the host's memory minus
  the headroom (`HEADROOM_SHARE` of it, at least `MIN_HEADROOM`): the stack runs, but a peak can
  reach swap or the OOM killer;
- **ok** otherwise. The plan's 8 GB VPS: limits 5.6 GiB + a second API 1 GiB = 6.6 GiB of ~7.8 GiB.

A service with no memory limit can take the whole host: that is a warning too.

With tracing on (LOGFIRE_TOKEN), each process that traces (every API worker process, in both API
containers during the switch, and the job worker) reserves `TRACING_MEMORY` more: Logfire and
OpenTelemetry's SDK, imported only then, and the spans waiting for export. The limits stay: the
containers' caps do not move, and the measured cost fits well inside them (docs/operations.md,
"Tracing with Logfire").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import managed

MIB = 1024 * 1024
GIB = 1024 * MIB
OS_ALLOWANCE = 512 * MIB  # the host itself: kernel, sshd, dockerd and containerd, journald
HEADROOM_SHARE = 0.10  # limits must leave this share of the host's memory free ...
MIN_HEADROOM = 512 * MIB  # ... and at least this much
SWITCH_SERVICE = "api"  # runs twice while traffic moves (rollout.api_rollout)
# Tracing's cost per process that traces: measured ~27 MiB more resident memory at start (the SDK
# and the instrumentations) plus a bounded export queue; rounded up.
TRACING_MEMORY = 48 * MIB
STACK_FILES = ("compose.yml", "docker-compose.production.yml")
# Compose's memory units (go-units RAMInBytes: binary multiples, case-insensitive, b/k/m/g/t[b]).
UNITS = {"": 1, "b": 1, "k": 1024, "m": MIB, "g": GIB, "t": 1024 * GIB}
SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)b?\s*$", re.I)

OK, WARN, REFUSE = "ok", "warning", "refused"


def parse_memory(value: object) -> int:
    """A Compose memory value (`128M`, `2G`, `512m`, `1.5g`, `1073741824`) in bytes."""
    if isinstance(value, bool):
        raise ValueError(f"not a memory size: {value!r}")
    if isinstance(value, int):
        return value
    match = SIZE_RE.match(str(value))
    if not match:
        raise ValueError(f"not a memory size: {value!r}")
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


def _merge(base: dict, override: dict) -> dict:
    """Compose's merge of mappings: nested mappings merge, anything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value,
                                                               dict) and isinstance(merged.get(key),
                                                                                    dict) else value
    return merged


@dataclass(frozen=True)
class ServiceMemory:
    name: str
    reservation: int  # bytes; 0 = none
    limit: int  # bytes; 0 = no limit


def stack_memory(root: Path, files: tuple[str, ...] = STACK_FILES,
                 traced: dict[str, int] | None = None,
                 managed_db: bool = False) -> list[ServiceMemory]:
    """Each production service's memory reservation and limit, the switching API twice; `traced`:
    the services that trace and how many processes each runs (`traced_processes`); `managed_db`:
    no postgres, its client container instead (commands/managed.py)."""
    traced = traced or {}
    services: dict = {}
    for name in files:
        document = yaml.safe_load((root / name).read_text()) or {}
        services = _merge(services, document.get("services") or {})
    if managed_db:
        postgres = services.pop("postgres")
        services[managed.CLIENT] = managed.client_service(postgres["image"], postgres)
    rows = []
    for name, spec in services.items():
        spec = spec or {}
        if spec.get("profiles"):
            continue  # the deploy enables no profile (the dashboard dev server)
        resources = ((spec.get("deploy") or {}).get("resources") or {})
        try:
            limit = parse_memory((resources.get("limits") or {}).get("memory",
                                                                     spec.get("mem_limit", 0)))
            reservation = parse_memory((resources.get("reservations") or {}).get(
                "memory", spec.get("mem_reservation", 0)))
        except ValueError as err:
            raise ValueError(f"service {name}: {err}") from None
        if traced.get(name):
            reservation += traced[name] * TRACING_MEMORY
            name = f"{name} + tracing"
        replicas = int((spec.get("deploy") or {}).get("replicas", 1))
        rows += [ServiceMemory(name if replicas == 1 else f"{name} ({i}/{replicas})", reservation,
                               limit)
                 for i in range(1, replicas + 1)]
        if name.split(" ")[0] == SWITCH_SERVICE:
            rows.append(ServiceMemory(f"{name} (new, during the switch)", reservation, limit))
    return rows


def traced_processes(tracing: bool, api_workers: int) -> dict[str, int]:
    """The processes that trace when LOGFIRE_TOKEN is set: each API worker process, and the job
    worker's one (`--workers 1`); none without the token."""
    return {"api": api_workers, "worker": 1} if tracing else {}


@dataclass(frozen=True)
class Budget:
    services: tuple[ServiceMemory, ...]
    host_memory: int  # bytes (MemTotal); 0 = unknown
    level: str  # OK, WARN, REFUSE
    reasons: tuple[str, ...]

    @property
    def reservations(self) -> int:
        return sum(s.reservation for s in self.services)

    @property
    def limits(self) -> int:
        return sum(s.limit for s in self.services)


def usable(host_memory: int) -> int:
    """What reservations may add up to."""
    return host_memory - OS_ALLOWANCE


def headroom(host_memory: int) -> int:
    return max(int(host_memory * HEADROOM_SHARE), MIN_HEADROOM)


def evaluate(services: list[ServiceMemory], host_memory: int) -> Budget:
    """The verdict, with a sentence per finding (numbers included)."""
    services = tuple(services)
    reserved, limited = sum(s.reservation for s in services), sum(s.limit for s in services)
    if host_memory <= 0:
        return Budget(services, 0, OK, ("the host's memory is unknown (no /proc/meminfo): not "
                                        "checked",))
    refuse, warn = [], []
    if reserved > usable(host_memory):
        refuse.append(f"the services reserve {size(reserved)}, more than the "
                      f"{size(usable(host_memory))} the host has for them "
                      f"({size(host_memory)} less {size(OS_ALLOWANCE)} for the system)")
    unlimited = [s.name for s in services if not s.limit]
    if unlimited:
        warn.append(f"{', '.join(unlimited)} {'has' if len(unlimited) == 1 else 'have'} no memory "
                    "limit and can take the whole host")
    ceiling = host_memory - headroom(host_memory)
    if limited > ceiling:
        warn.append(f"the limits add up to {size(limited)}, more than {size(ceiling)} "
                    f"({size(host_memory)} less "
                    f"{size(headroom(host_memory))} headroom): at peak the host runs out of memory "
                    f"before the services reach their limits")
    level = REFUSE if refuse else WARN if warn else OK
    return Budget(services, host_memory, level, tuple(refuse + warn))


def size(n: int) -> str:
    """Bytes for people: MiB below 1 GiB, GiB with one decimal above."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n // MIB} MiB"


def table(budget: Budget) -> str:
    width = max([len(s.name) for s in budget.services] + [len("service")])
    lines = [f"  {'service'.ljust(width)}  {'reservation':>11}  {'limit':>9}"]
    lines += [f"  {s.name.ljust(width)}  {size(s.reservation) if s.reservation else '-':>11}  "
              f"{size(s.limit) if s.limit else 'none':>9}" for s in budget.services]
    lines.append(f"  {'total'.ljust(width)}  {size(budget.reservations):>11}  "
                 f"{size(budget.limits):>9}")
    if budget.host_memory:
        lines.append(f"  host memory {size(budget.host_memory)}: reservations may use "
                     f"{size(usable(budget.host_memory))}, "
                     f"limits {size(budget.host_memory - headroom(budget.host_memory))}")
    return "\n".join(lines)


def summary(budget: Budget) -> str:
    """One line: the verdict and the totals."""
    if not budget.host_memory:
        return f"memory budget: {budget.reasons[0]}"
    return (f"memory budget: {budget.level} (reservations {size(budget.reservations)}, limits "
            f"{size(budget.limits)} "
            f"with a second api during the switch; host {size(budget.host_memory)})")
