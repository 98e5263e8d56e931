"""Ray's own surfaces: a local sweep's Ray instance listens on localhost only, and the dependency floors admit no
Ray without token authentication and no torch without the safe-globals API that checkpoint loading relies on."""

import os
import re
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT


def _floor(requirement: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.search(r">=([\d.]+)", requirement).group(1).split("."))


def test_dependency_floors_have_the_apis_the_code_uses():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    by_name = {re.match(r"[\w-]+", d).group(): d for d in deps}
    assert _floor(by_name["torch"]) >= (2, 5)  # torch.serialization.safe_globals
    assert _floor(by_name["ray"]) >= (2, 52)  # token authentication (RAY_AUTH_MODE=token)
    import torch

    assert hasattr(torch.serialization, "safe_globals")


def _listening(pids: set[int]) -> list[tuple[int, str]]:
    """(pid, local address) of every TCP socket in LISTEN state that one of `pids` holds, read from /proc."""
    inodes = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append((inodes[fields[9]], fields[1]))
    return found


def _loopback(address: str) -> bool:
    """A /proc/net/tcp{,6} local address (hex, little-endian words) on 127.0.0.0/8 or ::1."""
    host = address.split(":")[0]
    if len(host) == 8:
        return host.endswith("7F")
    return host == "00000000000000000000000001000000"


@pytest.mark.slow
def test_a_local_ray_instance_listens_on_localhost_only():
    import ray

    from harness.run.sweep import connect

    assert not ray.is_initialized()
    connect(None, num_cpus=1)
    try:
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        session = ray._private.worker.global_worker.node.session_name  # in every process of this instance
        ours = set()
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and session in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    ours.add(int(proc.name))
            except OSError:
                continue
        assert len(ours) >= 2  # the GCS and the raylet at least (other sessions on this machine are not ours)
        listening = _listening(ours)
        exposed = [(pid, address) for pid, address in listening if not _loopback(address)]
        assert listening and not exposed, exposed
    finally:
        ray.shutdown()
