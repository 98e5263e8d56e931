"""Ray's own surfaces: the local instance a sweep starts listens on loopback only, and the dependency floors admit no
Ray without token authentication and no torch without the safe-globals API that checkpoint loading relies on."""

import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT

# the driver starts the instance exactly as `harness sweep` without --address does, runs one task (so a worker's
# own server is up too) and waits until the test has listed the sockets (at most 5 minutes: no hung test)
_DRIVER = """
import signal, sys, ray
from harness.run.sweep import connect
signal.alarm(300)
connect(None, num_cpus=1)
ray.get(ray.remote(lambda: 0).remote())
print("ready", flush=True)
sys.stdin.read()
"""
# every Ray process of a local instance that listens on TCP; all of them must be found, or the check proves nothing
LISTENERS = {"driver", "worker", "gcs_server", "raylet", "dashboard agent", "runtime env agent", "dashboard",
             "autoscaler monitor"}
_NAMES = {"ray::DashboardAgent": "dashboard agent", "ray::RuntimeEnvAgent": "runtime env agent",
          "monitor.py": "autoscaler monitor", "dashboard.py": "dashboard"}


def _descendants(root: int) -> set[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError):
            continue
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += [p for p, parent in parents.items() if parent == pid and p not in found]
    return found


def _kind(pid: int, driver: int) -> str:
    """Which Ray process this is, from its command line (Ray's own processes rename themselves `ray::<name>`)."""
    if pid == driver:
        return "driver"
    args = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    if not args:  # a process that has just ended
        return "ended"
    if args[0].startswith("ray::"):
        return _NAMES.get(args[0].split()[0], "worker")
    names = [Path(a).name for a in args if not a.startswith("-")]
    name = names[1] if names[0].startswith("python") and len(names) > 1 else names[0]
    return _NAMES.get(name, name)


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_address)  # /proc/net/tcp*: 32-bit words in host (little-endian) order
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw))
    return getattr(ip, "ipv4_mapped", None) or ip


def listeners(driver: int) -> set[tuple[str, str, int]]:
    """(process kind, address, port) of every TCP socket in LISTEN state held by the driver or its descendants."""
    owner = {}
    for pid in _descendants(driver):
        try:
            kind = _kind(pid, driver)
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    owner[link[8:-1]] = kind
        except OSError:  # a process that just ended
            continue
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{driver}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in owner:  # 0A: LISTEN
                address, port = fields[1].split(":")
                found.add((owner[fields[9]], str(_address(address)), int(port, 16)))
    return found


def _kinds(found: set[tuple[str, str, int]]) -> set[str]:
    return {kind for kind, _, _ in found}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="lists sockets through Linux's /proc")
def test_a_local_sweeps_ray_instance_listens_on_loopback_only(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    log = tmp_path / "driver.log"
    with open(log, "w") as err:
        driver = subprocess.Popen([sys.executable, "-c", _DRIVER], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                  start_new_session=True)
    try:
        assert driver.stdout.readline().strip() == "ready", log.read_text()[-3000:]
        deadline = time.monotonic() + 60  # the agents come up after ray.init returns
        found = listeners(driver.pid)
        while not _kinds(found) >= LISTENERS and time.monotonic() < deadline:
            time.sleep(1)
            found = listeners(driver.pid)
    finally:
        driver.stdin.close()
        try:
            driver.wait(timeout=60)
        finally:
            try:
                os.killpg(driver.pid, signal.SIGKILL)  # whatever of this instance outlived its shutdown
            except ProcessLookupError:
                pass
    assert _kinds(found) >= LISTENERS, found
    exposed = sorted(f"{kind} {address}:{port}" for kind, address, port in found
                     if not ipaddress.ip_address(address).is_loopback)
    assert not exposed, "reachable from other machines:\n" + "\n".join(exposed)


def test_only_an_instance_of_its_own_is_bound_to_loopback(monkeypatch):
    """Joining a cluster (--address, RAY_ADDRESS) keeps Ray's own address resolution: other nodes must reach this
    one; the loopback switch holds for the local `ray.init` only, and is back afterwards even if that failed."""
    from ray._private import ray_constants

    from harness.run import sweep

    calls = []

    def init(**kwargs):
        calls.append((kwargs.get("_node_ip_address"), ray_constants.ENABLE_RAY_CLUSTER))
        raise RuntimeError("no instance in a fast test")

    monkeypatch.setattr(sweep.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(sweep.ray, "init", init)
    clusters = ray_constants.ENABLE_RAY_CLUSTER
    for address, env in (("10.0.0.1:6379", None), (None, "10.0.0.1:6379"), (None, None)):
        if env:
            monkeypatch.setenv("RAY_ADDRESS", env)
        else:
            monkeypatch.delenv("RAY_ADDRESS", raising=False)
        with pytest.raises(RuntimeError):
            sweep.connect(address, num_cpus=1)
        assert ray_constants.ENABLE_RAY_CLUSTER == clusters
    assert calls == [(None, clusters), (None, clusters), ("127.0.0.1", False)]


def _floor(requirement: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.search(r">=([\d.]+)", requirement).group(1).split("."))


def test_dependency_floors_have_the_apis_the_code_uses():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    by_name = {re.match(r"[\w-]+", d).group(): d for d in deps}
    assert _floor(by_name["torch"]) >= (2, 5)  # torch.serialization.safe_globals
    assert _floor(by_name["ray"]) >= (2, 52)  # token authentication (RAY_AUTH_MODE=token)
    import torch

    assert hasattr(torch.serialization, "safe_globals")
