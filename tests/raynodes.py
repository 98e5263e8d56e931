"""Real Ray nodes for tests, started and stopped by process group.

Other helpers and users may run Ray on the same machine, so `ray stop` (which kills every Ray process of the
user) is never used: each node is `ray start --block` in its own process group, with its own temp dir, its own
free ports, capped memory and a per-session auth token, and stopping it signals exactly that group.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
_PORT_FLAGS = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
               "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def auth_env() -> dict[str, str]:
    """Token auth with a fresh token for this cluster only: every node, driver and job client gets the same env."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_ADDRESS": "",
            "RAY_USAGE_STATS_ENABLED": "0", "PYTHONWARNINGS": "ignore"}


@dataclass
class Node:
    proc: subprocess.Popen
    temp_dir: Path
    log: Path

    def stop(self) -> None:
        """SIGTERM to this node's process group (raylet, GCS, the workers it forked), SIGKILL to what remains."""
        _signal_group(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.5)  # the group may outlive its leader for a moment
        _signal_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _start(args: list[str], env: dict[str, str], tag: str) -> Node:
    temp_dir = Path(tempfile.mkdtemp(prefix=f"r{tag}", dir="/tmp"))  # short: Ray's socket paths must fit 107 chars
    log = temp_dir / "start.log"
    ports = [arg for flag in _PORT_FLAGS for arg in (flag, str(free_port()))]
    cmd = [RAY, "start", "--block", "--disable-usage-stats", f"--temp-dir={temp_dir}", *ports, *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return Node(proc, temp_dir, log)


def start_head(env: dict[str, str], *, num_cpus: int, num_gpus: int, dashboard: bool = False,
               memory: int = 2 * 1024**3) -> tuple[Node, str, str | None]:
    """A head node; returns (node, GCS address, dashboard URL or None) once it accepts drivers."""
    port = free_port()
    dash_port = free_port()
    args = ["--head", f"--port={port}", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
            f"--num-gpus={num_gpus}", f"--memory={memory}", "--object-store-memory=100000000",
            f"--ray-client-server-port={free_port()}",
            f"--include-dashboard={'true' if dashboard else 'false'}", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash_port}"]
    node = _start(args, env, "h")
    address = f"127.0.0.1:{port}"
    wait_for_nodes(env, address, 1, node)
    url = f"http://127.0.0.1:{dash_port}" if dashboard else None
    if url:
        _wait_http(url + "/api/version", node)
    return node, address, url


def start_worker(env: dict[str, str], address: str, *, num_cpus: int, num_gpus: int,
                 memory: int = 2 * 1024**3) -> Node:
    args = [f"--address={address}", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
            f"--num-gpus={num_gpus}", f"--memory={memory}", "--object-store-memory=100000000"]
    return _start(args, env, "w")


def wait_for_nodes(env: dict[str, str], address: str, count: int, node: Node, timeout: float = 120) -> None:
    """Poll the cluster from a short-lived driver process until `count` nodes are alive."""
    probe = ("import ray,sys; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
             "print(sum(n['Alive'] for n in ray.nodes()))")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {node.proc.returncode}:\n{node.log.read_text()[-3000:]}")
        out = subprocess.run([sys.executable, "-c", probe, address], env={**os.environ, **env}, capture_output=True,
                             text=True, timeout=60)
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    raise TimeoutError(f"{count} Ray nodes not up at {address} after {timeout} s:\n{node.log.read_text()[-3000:]}")


def _wait_http(url: str, node: Node, timeout: float = 90) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except urllib.error.HTTPError:
            return  # answering (an auth error still means the dashboard is up)
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(1)
    raise TimeoutError(f"dashboard {url} not up after {timeout} s:\n{node.log.read_text()[-3000:]}")
