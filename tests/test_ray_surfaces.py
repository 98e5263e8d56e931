"""Ray's own surfaces: a local sweep's Ray instance listens on localhost only, and the dependency floors admit no
Ray without token authentication and no torch without the safe-globals API that checkpoint loading relies on."""

import re
import tomllib

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


@pytest.mark.slow
def test_a_local_ray_instance_listens_on_localhost_only():
    import psutil
    import ray

    from harness.run.sweep import connect

    assert not ray.is_initialized()
    connect(None, num_cpus=1)
    try:
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        session = ray._private.worker.global_worker.node.session_name  # in every process of this instance
        ours = {p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
                if session in " ".join(p.info["cmdline"] or [])}
        assert len(ours) >= 2  # the GCS and the raylet at least (other sessions on this machine are not ours)
        exposed = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in ours
                   and not c.laddr.ip.startswith(("127.", "::1"))]
        assert not exposed, exposed
    finally:
        ray.shutdown()
