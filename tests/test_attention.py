"""The attention diagnostic: known answers, agreement with an independent softmax(q k^T / sqrt(d)) from each
parity checkpoint's own qkv weights, the table, the pages and the command."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

import harness
from harness.cli import main
from harness.diagnostics.attention import attention_rows, block_metrics, explicit_attention, patch_distances, \
    top_count
from harness.report.attention import html_section, markdown_section
from harness.results.attention import METRICS, read_attention, write_attention
from conftest import manifests
from test_backbones import FAMILY_ENTRY, _overrides


class _Images(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], 0


def _last(rows: list[dict], metric: str, head: str = "mean") -> dict:
    depth = max(r["block"] for r in rows)
    return next(r for r in rows if r["block"] == depth and r["metric"] == metric and r["head"] == head)


def test_zero_query_and_key_weights_give_uniform_attention_exactly():
    bb = harness.load_backbone("demo-mae-tiny")
    attn = bb.model.blocks[-1].attn
    dim = bb.embed_dim
    with torch.no_grad():
        attn.qkv.weight[: 2 * dim].zero_()
        attn.qkv.bias[: 2 * dim].zero_()
    x = torch.randn(6, 3, bb.entry.img_size, bb.entry.img_size, generator=torch.Generator().manual_seed(0))
    rows = attention_rows(bb, "noise", _Images(x), images=6, seed=0)
    n_tokens = bb.num_prefix_tokens + (bb.entry.img_size // bb.entry.patch_size) ** 2
    n_patches = n_tokens - bb.num_prefix_tokens
    expect = {"cls_self": 1 / n_tokens, "patch_self": 1 / n_tokens, "cls_patch_entropy": 1.0, "patch_entropy": 1.0,
              "cls_patch_top10": top_count(n_patches) / n_patches, "patch_top10": top_count(n_patches) / n_patches,
              "patch_to_cls": 1 / n_tokens}
    for metric, value in expect.items():
        for head in ("0", "1", "mean"):
            row = _last(rows, metric, head)
            assert row["value"] == pytest.approx(value, abs=1e-6), (metric, head)
            assert row["spread"] == pytest.approx(0.0, abs=1e-6)
    assert _last(rows, "patch_to_registers")["applicable"] is False
    assert _last(rows, "patch_to_registers")["value"] is None
    assert top_count(196) == 20 and top_count(16) == 2 and top_count(4) == 1


def test_a_cls_that_attends_only_to_itself_has_self_share_one():
    """A block whose mask lets the [cls] query see only the [cls] key (patches see everything): share 1."""
    q = torch.randn(3, 2, 17, 8)
    k = torch.randn(3, 2, 17, 8)
    mask = torch.ones(17, 17, dtype=torch.bool)
    mask[0, 1:] = False
    seen = []
    with explicit_attention(torch.nn.Module(), seen.append):
        out = F.scaled_dot_product_attention(q, k, k, attn_mask=mask)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, k, attn_mask=mask), atol=1e-6)
    metrics = block_metrics(seen[0], 1, True, patch_distances((4, 4), torch.device("cpu")))
    assert torch.equal(metrics["cls_self"], torch.ones(3, 2))


def test_the_explicit_pass_returns_the_backbones_own_tokens():
    bb = harness.load_backbone("demo-simmim-tiny")
    x = torch.randn(2, 3, 32, 32)
    plain = bb.forward_tokens(x)
    with explicit_attention(bb.model, lambda p: None):
        explicit = bb.forward_tokens(x)
    assert (plain - explicit).abs().max() < 1e-5


def _independent_probs(bb, x: torch.Tensor) -> list[np.ndarray]:
    """softmax(q k^T / sqrt(d) [+ relative position bias]) of every block, from the qkv weights themselves (q and k
    rotated first where the model has RoPE)."""
    model, inputs = bb.model, []
    hooks = [blk.norm1.register_forward_hook(lambda m, a, out: inputs.append(out.detach()))
             for blk in model.blocks]
    with torch.no_grad():
        bb.forward_tokens(x)
    for h in hooks:
        h.remove()
    probs = []
    for blk, xn in zip(model.blocks, inputs):
        a = blk.attn
        if getattr(a, "q_bias", None) is not None:
            bias = torch.cat([a.q_bias, torch.zeros_like(a.q_bias), a.v_bias])
        else:
            bias = a.qkv.bias if a.qkv.bias is not None else torch.zeros(a.qkv.weight.shape[0])
        qkv = xn.double() @ a.qkv.weight.double().T + bias.double()
        b, n, _ = qkv.shape
        heads = a.num_heads
        q, k, _ = qkv.view(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
        if getattr(model, "rope", None) is not None:
            q, k = _rope(q, model.rope.periods, bb.num_prefix_tokens), _rope(k, model.rope.periods, bb.num_prefix_tokens)
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        rel = getattr(model, "rel_pos_bias", None)
        if rel is not None:
            logits = logits + rel().double()
        probs.append(logits.softmax(-1).numpy())
    return probs


def _rope(t: torch.Tensor, periods: torch.Tensor, prefix: int) -> torch.Tensor:
    """DINOv3's RoPE on the patch tokens of a square grid, from its description: per axis c = 2 (i + 0.5) / H - 1,
    angles 2 pi c / periods for rows then columns, tiled twice, rotate-half; prefix tokens are not rotated."""
    side = math.isqrt(t.shape[-2] - prefix)
    c = 2 * (torch.arange(side, dtype=torch.float64) + 0.5) / side - 1
    rows, cols = torch.meshgrid(c, c, indexing="ij")
    angles = torch.cat([2 * math.pi * rows.reshape(-1, 1) / periods.double(),
                        2 * math.pi * cols.reshape(-1, 1) / periods.double()], dim=-1).repeat(1, 2)
    pre, patches = t[..., :prefix, :], t[..., prefix:, :]
    half = patches.shape[-1] // 2
    turned = torch.cat([-patches[..., half:], patches[..., :half]], dim=-1)
    return torch.cat([pre, patches * angles.cos() + turned * angles.sin()], dim=-2)


def _reference_metrics(p: np.ndarray, prefix: int, has_cls: bool, grid: int) -> dict[str, np.ndarray]:
    """The same metrics, image by image and head by head, in plain numpy loops (float64)."""
    b, h, n, _ = p.shape
    m = n - prefix
    k = max(1, round(0.1 * m))
    pos = np.array([(i // grid, i % grid) for i in range(m)], dtype=float)
    dist = np.sqrt(((pos[:, None] - pos[None]) ** 2).sum(-1))
    out = {name: np.zeros((b, h)) for name in METRICS}
    for i in range(b):
        for j in range(h):
            a = p[i, j]
            rows = []
            for qi in range(prefix, n):
                row = a[qi, prefix:] / a[qi, prefix:].sum()
                rows.append((a[qi, qi], -(row * np.log(row)).sum() / np.log(m), np.sort(row)[::-1][:k].sum(),
                             (row * dist[qi - prefix]).sum(), a[qi, 0], a[qi, int(has_cls):prefix].sum()))
            rows = np.array(rows)
            out["patch_self"][i, j], out["patch_entropy"][i, j] = rows[:, 0].mean(), rows[:, 1].mean()
            out["patch_top10"][i, j], out["attention_distance"][i, j] = rows[:, 2].mean(), rows[:, 3].mean()
            if has_cls:
                c = a[0, prefix:] / a[0, prefix:].sum()
                out["cls_self"][i, j] = a[0, 0]
                out["cls_patch_entropy"][i, j] = -(c * np.log(c)).sum() / np.log(m)
                out["cls_patch_top10"][i, j] = np.sort(c)[::-1][:k].sum()
                out["patch_to_cls"][i, j] = rows[:, 4].mean()
            out["patch_to_registers"][i, j] = rows[:, 5].mean()
    return out


@pytest.mark.parity
@pytest.mark.parametrize("manifest_path", manifests("backbone"), ids=lambda p: p.parent.name)
def test_metrics_equal_an_independent_computation_on_every_parity_checkpoint(manifest_path):
    manifest = json.loads(manifest_path.read_text())
    check = next(c for c in manifest["checks"] if c["is_family_default"])
    bb = harness.load_backbone(FAMILY_ENTRY[manifest["family"]], manifest_path.parent / check["file"],
                               **_overrides(manifest))
    x = torch.load(manifest_path.parent / "reference.pt", weights_only=True)["x"].float()
    rows = attention_rows(bb, "fixture", _Images(x), images=len(x), seed=0)
    grid = manifest["arch"]["img_size"] // manifest["arch"]["patch_size"]
    prefix, has_cls = bb.num_prefix_tokens, bool(manifest["arch"]["class_token"])
    for block, probs in enumerate(_independent_probs(bb, x)):
        ref = _reference_metrics(probs, prefix, has_cls, grid)
        for metric, values in ref.items():
            for head in range(probs.shape[1]):
                row = next(r for r in rows if r["block"] == block and r["metric"] == metric and r["head"] == str(head))
                if not row["applicable"]:
                    assert metric in ("patch_to_registers",) or not has_cls
                    continue
                assert row["value"] == pytest.approx(values[:, head].mean(), abs=1e-5), (block, metric, head)
                assert row["spread"] == pytest.approx(values[:, head].std(ddof=1), abs=1e-5), (block, metric, head)


def test_memory_does_not_grow_with_images():
    """The accumulator keeps sums per block and metric only: its state is the same size for 4 and 40 images."""
    from harness.diagnostics.attention import measure

    bb = harness.load_backbone("demo-dino-tiny")
    x = torch.randn(40, 3, 32, 32)
    small, _ = measure(bb, _Images(x), images=4, seed=0, batch_size=4)
    large, n = measure(bb, _Images(x), images=40, seed=0, batch_size=4)
    assert n == 40 and small.keys() == large.keys()
    assert all(small[k].shape == large[k].shape for k in small)


def test_table_round_trip_and_pages(tmp_path):
    bb = harness.load_backbone("demo-ijepa-tiny")
    rows = attention_rows(bb, "noise", _Images(torch.randn(3, 3, 32, 32)), images=3, seed=1)
    write_attention(tmp_path, rows)
    frame = read_attention(tmp_path)
    assert len(frame) == len(rows) == bb.depth * len(METRICS) * (bb.num_heads + 1)
    assert frame[frame["metric"] == "cls_self"]["value"].isna().all()  # I-JEPA: no [cls]
    md = markdown_section(frame)
    assert "Where the tokens look" in md and "n/a" in md and "JEA" in md
    html = html_section(frame)
    assert "<svg" in html and "demo-ijepa-tiny" in html
    assert markdown_section(read_attention(tmp_path / "none")) == ""


def test_command_writes_rows_and_prints_json(tmp_path, capsys):
    code = main(["attention", "--grid", "demo", "--backbones", "demo-mae-tiny", "--images", "20",
                 "--results-dir", str(tmp_path), "--format", "json"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["backbone"] for r in rows} == {"demo-mae-tiny"} and rows[0]["images"] == 20
    assert len(read_attention(tmp_path)) == len(rows)
    assert main(["attention", "--grid", "demo", "--images", "0", "--results-dir", str(tmp_path)]) == 2
    assert "--images 0" in capsys.readouterr().err


def test_statements_show_the_block_the_probe_selected(tmp_path):
    """Where a grid swept layers, each statement row also gives the probe's most often selected layer and the
    measured values at that block; a layer of several blocks has no single block's values."""
    from types import SimpleNamespace

    from harness.report.attention import probe_layers, statement_rows

    bb = harness.load_backbone("demo-mae-tiny")
    frame = pd.DataFrame(attention_rows(bb, "digits", _Images(torch.randn(3, 3, 32, 32)), images=3, seed=0))
    picks = [SimpleNamespace(layer=layer) for layer in ("0", "0", "-1")]
    board = SimpleNamespace(dataset="digits", layer_curves=[SimpleNamespace(backbone="demo-mae-tiny", aggregator="cls")],
                            rows=[SimpleNamespace(backbone="demo-mae-tiny", cells={
                                "cls": SimpleNamespace(picks=picks), "mean": SimpleNamespace(picks=picks)})])
    probes = probe_layers([board])
    assert probes == {("demo-mae-tiny", "digits"): {"cls": "0"}}  # mean did not sweep layers on this board
    (text, names, (row,)), *_ = statement_rows(frame, probes)
    at_block0 = frame[(frame["block"] == 0) & (frame["head"] == "mean") & (frame["metric"] == "cls_self")].iloc[0]
    assert names == ["[cls]→self", "cls probe's layer", "[cls]→self there"]
    assert row[-2] == "cls: 0" and row[-1] == f"{at_block0.value:.3f} ± {at_block0.spread:.3f}"
    patch_rows = statement_rows(frame, probes)[2][2]
    assert patch_rows[0][-2:] == ["—", "—"]  # the mean probe swept no layers
    several = statement_rows(frame, {("demo-mae-tiny", "digits"): {"cls": "last2"}})[0][2][0]
    assert several[-2:] == ["cls: last2", "—"]
