"""Ray's own surfaces: the dependency floors admit no Ray without token authentication and no torch without the
safe-globals API that checkpoint loading relies on."""

import re
import tomllib

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
