"""Images over SSH, for hosts that cannot pull: one `docker save` here, without the layers every
receiving host already has, streamed through `zstd -1` (or `gzip -1`, where a host or this machine
has no zstd) into `docker load` on each host at once.
A code-only release therefore sends its new layers (kilobytes), not its whole image."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

from . import localhost, remote
from .commands import images as image_commands
from .steps import StepFailed

if TYPE_CHECKING:
    from .host import Host


def ship_images_to(hosts: list[Host], images: list[str], report_every: float = 3.0) -> int:
    """Ship `images` to every host in `hosts`; prints progress; returns the compressed bytes sent
    to each. The save is read once, compressed once, and written to every host's load."""
    names = ", ".join(host.name for host in hosts)
    chains, packed = shared_chains(hosts)
    if not chains:  # nothing to leave out (a new host): the save streams straight through
        return stream(lambda out, failed: save_into(images, out, failed), hosts, images,
                      report_every, packed)
    with tempfile.TemporaryDirectory(prefix="tasktracker-ship-") as tmp:
        saved = Path(tmp, "images.tar")
        result = localhost.run(image_commands.save(images, str(saved)), check=False)
        if result.returncode:
            raise StepFailed("ship images", f"docker save {' '.join(images)} failed here: "
                                            f"{result.stderr.strip()[-500:]}")
        skip, skipped_bytes = skippable_layers(saved, chains)
        if skip:
            print(f"   {len(skip)} layer(s), {skipped_bytes / 1e6:.0f} MB, already on {names}: "
                  "not sent", flush=True)
        return stream(lambda out, failed: copy_without(saved, skip, out, failed), hosts, images,
                      report_every, packed)


def shared_chains(hosts: list[Host]) -> tuple[set[tuple[str, ...]], str]:
    """The layer chains every one of `hosts` has (none when one cannot say), and the compression
    every one of them and this machine can handle."""
    inventories = remote.side_by_side(layer_inventory, hosts)
    common: set[tuple[str, ...]] | None = None
    for inventory in inventories:
        chains = image_commands.parse_layer_inventory(inventory)
        common = chains if common is None else common & chains
    return common or set(), image_commands.codec(inventories, bool(shutil.which("zstd")))


def layer_inventory(host: Host) -> str:
    found = host.conn.run(image_commands.layer_inventory(), hide=True, warn=True)
    return found.stdout if found.ok else ""


def skippable_layers(saved: Path, chains: set[tuple[str, ...]]) -> tuple[set[str], int]:
    """The layer files of the save that no host needs, and their size. A layer file the save
    links to (identical layers are stored once) is kept when a kept layer points at it."""
    if not chains:
        return set(), 0
    with tarfile.open(saved) as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
        manifest = json.load(tar.extractfile(members["manifest.json"]))
        configs = {image["Config"]: json.load(tar.extractfile(members[image["Config"]]))
                   for image in manifest}
    skip = image_commands.layers_to_skip(manifest, configs, chains)
    for name, member in members.items():
        if member.issym() and name not in skip:
            skip.discard(os.path.normpath(os.path.join(os.path.dirname(name), member.linkname)))
    return skip, sum(members[name].size for name in skip if name in members)


def save_into(images: list[str], out: IO[bytes], failed: list[BaseException]) -> None:
    """`docker save` of `images` written to `out`."""
    try:
        saved = subprocess.run(image_commands.save(images), stdout=out, stderr=subprocess.PIPE)
        if saved.returncode:
            failed.append(OSError(f"docker save {' '.join(images)} failed here: "
                                  f"{saved.stderr.decode(errors='replace').strip()[-500:]}"))
    except OSError as error:
        failed.append(error)


def copy_without(saved: Path, skip: set[str], out: IO[bytes], failed: list[BaseException]) -> None:
    """Write the save, less the `skip` files, to `out` as a tar stream."""
    try:
        with tarfile.open(saved) as src, \
                tarfile.open(fileobj=out, mode="w|", format=src.format, copybufsize=1 << 20) as dst:
            for member in src:
                if member.name.removeprefix("./") not in skip:
                    dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    except (OSError, tarfile.TarError) as error:  # the packer or every load ended: said below
        failed.append(error)


def write_and_close(write_tar, out: IO[bytes], failed: list[BaseException]) -> None:
    """`write_tar(out, failed)`, then `out` closed, however the writing ended."""
    try:
        write_tar(out, failed)
    finally:
        try:
            out.close()
        except OSError:
            pass


def stream(write_tar, hosts: list[Host], images: list[str], report_every: float,
           packed: str = "gzip") -> int:
    """`write_tar(out, failed)` (the save, whole or less some layers) through zstd (or gzip:
    `packed`) here, each compressed chunk written to every host's `docker load`."""
    names = ", ".join(host.name for host in hosts)
    packer = subprocess.Popen(image_commands.COMPRESS[packed], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    failed: list[BaseException] = []
    writer = threading.Thread(target=write_and_close, args=(write_tar, packer.stdin, failed))
    writer.start()
    destination = [f"{host.conn.user}@{host.conn.host}" for host in hosts]
    loads = [subprocess.Popen(image_commands.ssh_load(remote.ssh_argv(host.conn), to, packed),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for host, to in zip(hosts, destination, strict=True)]
    receiving = list(loads)
    sent, started, last = 0, time.monotonic(), time.monotonic()
    try:
        while receiving and (chunk := packer.stdout.read(1 << 20)):
            for load in list(receiving):
                try:
                    load.stdin.write(chunk)
                except BrokenPipeError:  # that load ended early: its exit status says why
                    receiving.remove(load)
            sent += len(chunk)
            if time.monotonic() - last > report_every:
                last = time.monotonic()
                print(f"   shipped {sent / 1e6:.0f} MB ({sent / 1e6 / (last - started):.1f} MB/s)",
                      flush=True)
    finally:
        for load in loads:
            try:
                load.stdin.close()
            except BrokenPipeError:
                pass
    if not receiving:  # every load ended early: stop the tar instead of waiting on a full pipe
        packer.kill()
    errors = []
    for load in loads:  # stdin is closed: read what each said, then its exit status
        load.stdout.read()
        errors.append(load.stderr.read())
        load.wait()
    packer.stdout.close()
    packer.wait()
    writer.join()
    broken = [(host, err) for host, load, err in zip(hosts, loads, errors, strict=True)
              if load.returncode]
    if broken or packer.returncode or (failed and receiving):
        source_failed = (hosts[0], str(failed[0]).encode()) if failed and receiving else None
        host, err = source_failed or (broken[0] if broken else (hosts[0], b"the compressor failed"))
        why = err.decode(errors="replace").strip()[-500:]
        raise StepFailed("ship images", f"sending {', '.join(images)} to {host.name} failed: {why}")
    print(f"   shipped {', '.join(images)} to {names}: {sent / 1e6:.1f} MB ({packed}) in "
          f"{time.monotonic() - started:.1f}s")
    return sent
