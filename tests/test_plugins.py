"""Plug-ins: a kind or a family registered from outside the package with one module-level call and one TOML entry
in a temporary registry folder is validated, built, loaded and trained like the built-in ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import harness
from harness.errors import HarnessError
from harness.heads.bank import HeadBank, HeadSpec
from harness.heads.kinds import Dims, Kind, Option, positive_number, register
from harness.heads.pool.kernels import Params, StackedPool, pool_shared, rows_shared
from harness.heads.train import train_cached
from harness.models.families import Family, register as register_family
from harness.models.families.mae import convert as convert_mae
from harness.registry import load_registry, registry_dir
from single_thread import one_thread  # noqa: F401 (autouse fixture)
from test_headbank import C, D, HEADS, PREFIX, tokens


class OneQueryPool(StackedPool):
    """One learned query attending over the patch tokens at a temperature: a kind the package does not ship."""

    def __init__(self, dim: int, skip: int, temperature: float):
        super().__init__()
        self.skip, self.scale = skip, 1.0 / temperature
        self.query = nn.Parameter(torch.randn(1, dim) * 0.02)

    def stacked(self, p: Params, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens[:, self.skip:]
        attn = rows_shared(p["query"] * self.scale, x).softmax(dim=-1)  # (N, B, 1, T)
        return pool_shared(attn, x)[:, :, 0]


def _build(dims: Dims, opts: dict) -> tuple[nn.Module, int]:
    return OneQueryPool(dims.embed_dim, dims.num_prefix_tokens, opts["temperature"]), dims.embed_dim


register(Kind(name="one_query", pooler=_build, options={"temperature": Option(1.0, "a positive number",
                                                                              positive_number)}))


def _toy_convert(sd: dict) -> dict:
    """A layout that differs from MAE's only in key names: `trunk.layers.N` for `blocks.N`."""
    return convert_mae({k.replace("trunk.layers.", "blocks.").replace("trunk.", ""): v for k, v in sd.items()})


register_family(Family(name="toy", convert=_toy_convert))
TOY_ENTRY = """["toy-vit-tiny"]
extends = "mae-vit-b16"
family = "toy"
img_size = 32
patch_size = 8
checkpoint_key = "weights"
arch_overrides = { img_size = 32, patch_size = 8, embed_dim = 64, depth = 2, num_heads = 2 }
"""


def _registry_with(tmp_path: Path, entry: str, folder: str = "aggregators") -> Path:
    root = tmp_path / "registry"
    shutil.copytree(registry_dir(), root)
    (root / folder).mkdir(exist_ok=True)
    (root / folder / "plugin.toml").write_text(entry)
    return root


def test_a_kind_registered_by_a_test_module_trains_in_a_bank_next_to_built_in_heads(tmp_path: Path):
    reg = load_registry(_registry_with(tmp_path, '[toy]\nkind = "one_query"\ntap = "norm"\n'
                                                 'options = { temperature = 0.5 }\n'))
    names = ("cls", "mean", "abmilp", "toy")
    specs = [HeadSpec(name, name, reg.aggregator(name), {}, "sgd", 0.3, 0.0, 0) for name in names]
    bank = HeadBank(specs, embed_dim=D, num_heads=HEADS, num_prefix_tokens=PREFIX, num_classes=C, batch_size=16,
                    total_steps=12, warmup_steps=2)
    toy_group = next(g for g in bank.groups if g.members == [3])
    assert isinstance(toy_group.pooler, OneQueryPool)  # trained through its stacked kernel, with the attention heads
    outcomes = train_cached(bank, tokens(64, 1), tokens(40, 2), tokens(40, 3), epochs=3, batch_size=16)
    assert [o.status for o in outcomes] == ["ok"] * len(names)
    assert outcomes[3].val_top1 > 100 / C and len(outcomes[3].curves) == 3


def test_a_registered_kind_s_options_are_checked_when_the_registry_is_read(tmp_path: Path):
    root = _registry_with(tmp_path, '[toy]\nkind = "one_query"\ntap = "norm"\noptions = { temperature = 0 }\n')
    with pytest.raises(HarnessError, match=r"plugin.toml\): option 'temperature' is 0; accepted: a positive number"):
        load_registry(root)


def test_a_family_registered_by_a_test_module_loads_its_checkpoint_layout(tmp_path: Path, monkeypatch):
    reference = harness.load_backbone("demo-mae-tiny")  # random-init weights in MAE's layout, saved renamed
    renamed = {"trunk." + k.replace("blocks.", "layers."): v for k, v in reference.model.state_dict().items()}
    torch.save({"weights": renamed}, tmp_path / "toy.pth")
    monkeypatch.setenv("HARNESS_REGISTRY_DIR", str(_registry_with(tmp_path, TOY_ENTRY, folder="backbones")))
    toy = harness.load_backbone("toy-vit-tiny", tmp_path / "toy.pth")
    assert toy.entry.family == "toy" and toy.num_prefix_tokens == 1
    x = torch.randn(2, 3, 32, 32)
    want, got = reference.forward_taps(x, ["norm", "prenorm"]), toy.forward_taps(x, ["norm", "prenorm"])
    assert all(torch.equal(got[tap], want[tap]) for tap in want)
