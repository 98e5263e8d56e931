"""Readouts beyond the last block's [cls]: layer taps from one pass, register tokens, cls_mean and weighted k-NN.

Known answers on generated tokens (the layer holding the label is selected; registers read what mean cannot), the
k-NN against an independent numpy reference (ties included), and DINOv2's linear heads (last 1 / 4 blocks x with
and without the patch mean) against its recipe fixture.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import harness
from conftest import fixtures_root
from results_factory import make_row
from harness.errors import HarnessError
from harness.heads.bank import HeadBank, HeadSpec
from harness.heads.knn import knn_rankings, neighbours
from harness.heads.train import train_cached
from harness.registry import AggregatorEntry
from harness.results.selection import select_best
from harness.tokens.cache import TokenSet, extract_tokens
from harness.tokens.layers import layer_blocks, layer_label, layer_taps
from single_thread import one_thread  # noqa: F401 (autouse fixture)

D, PATCHES, C = 16, 8, 4


def entry(kind: str, tap: str = "norm", **options) -> AggregatorEntry:
    return AggregatorEntry(kind, kind, tap, options)


def train_heads(specs: list[HeadSpec], sets: list[TokenSet], *, prefix: int = 1, registers: int = 0, depth: int = 1,
                epochs: int = 8) -> pd.DataFrame:
    """Rows (aggregator, layer, lr, val_top1, test_top1, ...) of heads trained on (train, val, test) token sets."""
    bank = HeadBank(specs, embed_dim=D, num_heads=2, num_prefix_tokens=prefix, num_classes=C, batch_size=32,
                    total_steps=epochs * (len(sets[0]) // 32), warmup_steps=0, depth=depth, num_registers=registers)
    outcomes = train_cached(bank, *sets, epochs=epochs, batch_size=32)
    rows = [{**make_row(aggregator=s.aggregator.name, aggregator_kind=s.aggregator.kind, seed=s.seed, layer=s.layer,
                        lr=s.lr, status=o.status, val_top1=o.val_top1, test_top1=o.test_top1)} for s, o in zip(specs, outcomes)]
    return pd.DataFrame(rows)


def spec(agg: AggregatorEntry, lr: float, layer: str = "-1") -> HeadSpec:
    return HeadSpec(f"{agg.name}/{layer}/{lr}", f"{agg.name}{layer}{lr}", agg, {}, "sgd", lr, 0.0, 0, layer=layer)


# ----------------------------------------------------------------------------------------------- layer taps


def test_layer_labels_and_their_blocks():
    assert [layer_label(v) for v in (-1, 8, "last4", [4, 8, 11], [3], "2+5")] == ["-1", "8", "last4", "4+8+11",
                                                                                  "3", "2+5"]
    assert [layer_label(v) for v in ("first", True, [], 1.5, ["a"])] == [None] * 5
    assert layer_blocks("last4", 12) == (8, 9, 10, 11) and layer_blocks("-4", 12) == (8,)
    assert layer_taps("last2", "norm", 12) == ("block10.norm", "norm")
    assert layer_taps("0+11", "prenorm", 12) == ("block0", "prenorm")
    with pytest.raises(HarnessError, match="has 12 blocks; accepted: indices from -12 to 11"):
        layer_blocks("12", 12)
    with pytest.raises(HarnessError, match="reads a block twice"):
        layer_blocks("-1+11", 12)


def test_grid_layers_are_heads_of_their_own_and_bad_values_are_refused(tmp_path):
    from harness.registry import load_registry
    from harness.run.plan import expand

    reg = load_registry()
    base = (tmp_path / "g.toml")
    base.write_text('backbones = ["demo-dino-tiny"]\ndatasets = ["digits"]\nepochs = 1\nbatch_size = 64\nseeds = [0]\n'
                    '[heads.cls]\noptimizer = "sgd"\nlr = [0.1, 1.0]\nlayers = [-1, 0, "last2"]\n')
    (trial,) = expand(reg.grid(str(base)), reg)
    assert sorted({h.layer for h in trial.heads}) == ["-1", "0", "last2"] and len(trial.heads) == 6
    assert {h.head_id for h in trial.heads if h.layer == "-1"} == {"cls/lr=0.1/wd=0/seed=0", "cls/lr=1/wd=0/seed=0"}
    assert "cls/layer=last2/lr=0.1/wd=0/seed=0" in {h.head_id for h in trial.heads}
    base.write_text(base.read_text().replace('"last2"]', '"first"]'))
    with pytest.raises(HarnessError, match="'heads.cls.layers' has 'first'; accepted: a list of layer choices"):
        reg.grid(str(base))


def test_every_tap_comes_from_one_pass_that_stops_at_the_deepest_block():
    bb = harness.load_backbone("demo-mae-tiny")
    x = torch.randn(3, 3, 32, 32)
    calls = []
    hooks = [blk.register_forward_hook(lambda *_: calls.append(1)) for blk in bb.model.blocks]
    taps = bb.forward_taps(x, ["block0", "block0.norm", "prenorm", "norm"])
    assert len(calls) == bb.depth == 2
    calls.clear()
    assert torch.equal(bb.forward_taps(x, ["block0"])["block0"], taps["block0"]) and len(calls) == 1
    for h in hooks:
        h.remove()
    assert torch.equal(taps["block0.norm"], bb.model.norm(taps["block0"]))
    assert torch.equal(taps["norm"], bb.model.forward_features(x))
    blocks = bb.model.forward_intermediates(x, indices=[0, 1], output_fmt="NLC", intermediates_only=True,
                                            return_prefix_tokens=True)
    assert [torch.equal(torch.cat(b[::-1], 1), taps[t]) for b, t in zip(blocks, ("block0", "prenorm"))] == [True] * 2
    with pytest.raises(HarnessError, match="accepted: norm, prenorm, block<i> or block<i>.norm"):
        bb.forward_taps(x, ["block2"])


def test_passes_do_not_grow_with_the_number_of_layers(tmp_path, monkeypatch):
    """A trial tapping 4 layers (both blocks, with and without the final norm) costs the passes of one tapping 1."""
    import dataclasses

    from harness.models.backbones import Backbone
    from harness.registry import load_registry
    from harness.run.plan import expand
    from harness.run.trial import run_trial

    forwards = []
    original = Backbone.forward_taps
    monkeypatch.setattr(Backbone, "forward_taps", lambda self, images, taps: forwards.append(len(images))
                        or original(self, images, taps))
    reg = load_registry()
    counts = {}
    for heads in ('[heads.cls]\noptimizer = "sgd"\nlr = [0.1]\n',
                  '[heads.cls]\noptimizer = "sgd"\nlr = [0.1]\nlayers = [-1, 0, "last2"]\n'
                  '[heads.abmilp]\noptimizer = "sgd"\nlr = [0.1]\nlayers = ["last2", 0]\n'):
        path = tmp_path / f"g{len(counts)}.toml"
        path.write_text('backbones = ["demo-dino-tiny"]\ndatasets = ["digits"]\nepochs = 1\nbatch_size = 256\n'
                        f'seeds = [0]\n{heads}')
        plan = dataclasses.replace(expand(reg.grid(str(path)), reg)[0], cache_dir=str(tmp_path / f"c{len(counts)}"))
        forwards.clear()
        rows, _, _ = run_trial(plan)
        assert {r["status"] for r in rows} == {"ok"}
        counts[len({(r["token_tap"], r["layer"]) for r in rows})] = (sum(forwards), len(forwards),
                                                                     {r["backbone_passes"] for r in rows})
    (one, many) = counts.values()
    assert list(counts) == [1, 5] and one == many == (1797, many[1], {1797})


# ------------------------------------------------------------------------------------------ known answers


def layered_world(n: int, seed: int, depth: int = 3, carrier: int = 1) -> TokenSet:
    """Tokens of `depth` blocks (norm taps) where only block `carrier`'s [cls] and patches carry the label."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(C, D, generator=torch.Generator().manual_seed(7)) * 2
    labels = torch.randint(0, C, (n,), generator=g)
    taps = {}
    for b in range(depth):
        x = torch.randn(n, 1 + PATCHES, D, generator=g)
        if b == carrier:
            x += centres[labels][:, None]
        taps["norm" if b == depth - 1 else f"block{b}.norm"] = x.half()
    return TokenSet(taps, labels)


def test_layer_sweep_selects_the_block_that_carries_the_label():
    sets = [layered_world(n, seed) for n, seed in ((256, 1), (128, 2), (128, 3))]
    specs = [spec(entry(kind), lr, layer) for kind in ("cls", "mean", "cls_mean") for layer in ("0", "1", "-1")
             for lr in (0.3, 3.0)]
    rows = train_heads(specs, sets, depth=3)
    best = select_best(rows)
    assert (best["layer"] == "1").all() and (best["test_top1"] > 90).all(), best
    chance = rows[rows["layer"] != "1"]
    assert chance["test_top1"].max() < 50


def register_world(n: int, seed: int) -> TokenSet:
    """[cls], 4 registers, 8 patches: only the registers carry the label."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(C, D, generator=torch.Generator().manual_seed(3)) * 2
    labels = torch.randint(0, C, (n,), generator=g)
    x = torch.randn(n, 5 + PATCHES, D, generator=g)
    x[:, 1:5] += centres[labels][:, None]
    return TokenSet({"norm": x.half()}, labels)


def test_registers_are_read_by_registers_and_kept_out_of_mean():
    sets = [register_world(n, seed) for n, seed in ((256, 1), (128, 2), (128, 3))]
    specs = [spec(entry(kind), lr) for kind in ("mean", "registers", "cls") for lr in (0.3, 3.0)]
    best = select_best(train_heads(specs, sets, prefix=5, registers=4)).set_index("aggregator")["test_top1"]
    assert best["registers"] == 100.0 and best["mean"] < 45 and best["cls"] < 45, best
    rows = train_heads([spec(entry("registers"), 1.0)], sets, prefix=1, registers=0)
    assert rows["status"].tolist() == ["not-applicable"]


def test_attention_heads_leave_registers_out_unless_asked():
    from harness.heads.head import build_head

    for content, skip in (("patch", 5), ("patch+registers", 1), ("all", 0)):
        head = build_head(entry("abmilp", content=content), embed_dim=D, num_heads=2, num_prefix_tokens=5,
                          num_registers=4, num_classes=C)
        assert head.pooler.skip == skip
    mean = build_head(entry("mean"), embed_dim=D, num_heads=2, num_prefix_tokens=5, num_registers=4, num_classes=C)
    x = torch.randn(2, 5 + PATCHES, D)
    assert torch.equal(mean.pool(x), x[:, 5:].mean(1))


# -------------------------------------------------------------------------------------------------- k-NN


def knn_reference(train: np.ndarray, train_labels: np.ndarray, queries: np.ndarray, k: int, t: float,
                  num_classes: int) -> np.ndarray:
    """DINO's weighted k-NN written plainly: cosine similarity, the k most similar (equal similarity: lower
    index first), votes exp(sim / T), the class of the highest vote (equal votes: lower class)."""
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    predictions = []
    for row in q @ a.T:
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]
        votes = np.zeros(num_classes)
        for j in order:
            votes[train_labels[j]] += np.exp(np.float64(row[j]) / t)
        predictions.append(max(range(num_classes), key=lambda c: (votes[c], -c)))
    return np.array(predictions)


def clustered(n: int, seed: int, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of 4 ones among 32 channels, drawn near their class's pattern: many exactly equal similarities
    (every cosine is a multiple of 1/4, computed exactly in float32), so ties decide neighbours and votes."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    x = torch.zeros(n, 32)
    for i, c in enumerate(labels.tolist()):
        own = [4 * c + j for j in range(4)]
        swap = torch.randint(0, 3, (1,), generator=g).item()
        others = torch.randperm(32, generator=g)[:swap].tolist()
        keep = own[:4 - swap] + others
        x[i, keep] = 1.0
        while x[i].sum() < 4:  # an "other" channel fell on an own one: top up deterministically
            x[i, int(torch.randint(0, 32, (1,), generator=g))] = 1.0
    return x, labels


@pytest.mark.parametrize("train_chunk, query_chunk", [(16384, 1024), (7, 5)])
def test_knn_equals_an_independent_reference_including_ties(train_chunk, query_chunk):
    train, train_labels = clustered(300, 0)
    queries, _ = clustered(80, 1)
    ks, temperatures = (1, 10, 20, 100, 200), (0.07, 0.1, 0.2)
    ours = knn_rankings(torch.nn.functional.normalize(train, dim=1), train_labels,
                        torch.nn.functional.normalize(queries, dim=1), 5, ks, temperatures,
                        query_chunk=query_chunk, train_chunk=train_chunk)
    sims = (queries @ train.T / 4).numpy()
    assert (sims[:, :, None] == sims[:, None, :]).any()  # ties exist
    for k in ks:
        for t in temperatures:
            expected = knn_reference(train.numpy(), train_labels.numpy(), queries.numpy(), k, t, 5)
            assert np.array_equal(ours[(k, t)][:, 0].numpy(), expected), (k, t)


def test_neighbours_break_equal_similarities_by_training_index():
    train = torch.tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 3)
    sims, index = neighbours(train, torch.tensor([[1.0, 0.0], [0.0, 1.0]]), 4, train_chunk=3)
    assert index.tolist() == [[0, 1, 2, 3], [5, 6, 7, 0]] and sims[1].tolist() == [1.0, 1.0, 1.0, 0.0]


def test_knn_heads_run_in_a_trial_from_the_cache(tmp_path):
    import dataclasses

    from harness.registry import load_registry
    from harness.run.plan import expand
    from harness.run.trial import run_trial

    path = tmp_path / "g.toml"
    path.write_text('backbones = ["demo-dino-tiny", "demo-ijepa-tiny"]\ndatasets = ["digits"]\nepochs = 1\n'
                    'batch_size = 256\nseeds = [0, 1]\n[heads.knn]\noptions = { source = "cls_mean" }\n'
                    'layers = [-1, "last2"]\n[heads.mean]\noptimizer = "sgd"\nlr = [0.1]\n')
    reg = load_registry()
    dino, ijepa = (dataclasses.replace(t, cache_dir=str(tmp_path / "c")) for t in expand(reg.grid(str(path)), reg))
    knn = [h for h in dino.heads if h.aggregator.name == "knn"]
    assert len(knn) == 2 * 4 * 3 and {h.seed for h in knn} == {0}  # deterministic: one seed
    rows, curves, predictions = run_trial(dino)
    assert len(predictions) == len(rows)  # k-NN heads store their test predictions too
    by = {r["head_id"]: r for r in rows}
    assert {r["status"] for r in rows} == {"ok"} and by["knn/k=20/T=0.07/seed=0"]["optimizer"] == "none"
    assert (by["knn/layer=last2/k=20/T=0.07/seed=0"]["token_tap"], by["knn/layer=last2/k=20/T=0.07/seed=0"]["layer"]) \
        == ("norm", "last2")
    assert all(20 < r["test_top1"] <= 100 for r in rows if r["aggregator"] == "knn")  # chance: 10
    assert json.loads(by["knn/k=10/T=0.1/seed=0"]["aggregator_options"]) == {"source": "cls_mean"}
    assert json.loads(by["knn/k=10/T=0.1/seed=0"]["swept_options"]) == {"k": 10, "T": 0.1}
    best = select_best(pd.DataFrame(rows))  # k, T and the layer are selected on val, like an lr
    assert best.groupby("aggregator").size().to_dict() == {"knn": 1, "mean": 2}
    rows, _, _ = run_trial(ijepa)
    assert {r["status"] for r in rows if r["aggregator"] == "knn"} == {"not-applicable"}  # no [cls] for cls_mean


# ------------------------------------------------------------------------------------------- DINOv2 recipe


def test_cls_mean_over_last_blocks_reproduces_dinov2_linear_heads():
    """The recipe fixture's 8 heads (last 1 / 4 blocks x avgpool, 2 lrs), trained by the bank step by step."""
    folder = fixtures_root() / "recipes" / "dinov2_linear"
    manifest = json.loads((folder / "manifest.json").read_text())
    data = torch.load(folder / "data.pt", weights_only=True)
    traj = torch.load(folder / "traj_all_heads.pt", weights_only=True)
    sizes, hp, tol = manifest["sizes"], manifest["hyperparameters"], manifest["tolerance"]
    heads = manifest["variants"]["all_heads"]["heads"]
    specs = []
    for h in heads:
        agg = entry("cls_mean" if h["use_avgpool"] else "cls", batchnorm=False)
        lr = h["lr_scaled"] * 256 / hp["batch_size"]  # the grid's lr; the sgd preset scales it by batch / 256
        specs.append(HeadSpec(h["name"], h["name"], agg, {}, "sgd", lr, 0.0, 0, layer=f"last{h['use_n_blocks']}"))
    depth = 4
    bank = HeadBank(specs, embed_dim=sizes["D"], num_heads=2, num_prefix_tokens=1, num_classes=sizes["C"],
                    batch_size=hp["batch_size"], total_steps=sizes["K"], warmup_steps=0, depth=depth)
    for g in bank.groups:  # load the official init into the stacked (N, D, C) weights
        for slot, i in enumerate(g.members):
            name = f"classifiers_dict.{heads[i]['name']}.linear"
            g.weight[slot] = traj["init"][f"{name}.weight"].T
            g.bias[slot] = traj["init"][f"{name}.bias"]

    def taps(blocks: torch.Tensor) -> dict[str, torch.Tensor]:
        return {("norm" if b == depth - 1 else f"block{b}.norm"): blocks[b] for b in range(depth)}

    for s in range(sizes["K"]):
        idx = data["batch_order"][s]
        bank.step(taps(data["train_blocks"][:, idx]), data["train_labels"][idx])
    logits = {}
    for g in bank.groups:
        out = g.logits(torch.cat([taps(data["eval_blocks"])[t] for t in g.taps], dim=-1), train=False)
        for slot, i in enumerate(g.members):
            name = f"classifiers_dict.{heads[i]['name']}.linear"
            assert (g.weight[slot].T - traj[f"step_{sizes['K']}"][f"{name}.weight"]).abs().max() <= tol["params_atol"]
            logits[heads[i]["name"]] = out[slot]
    for name, expected in traj["eval_logits"].items():
        assert (logits[name] - expected).abs().max() <= tol["eval_logits_atol"], name


# ------------------------------------------------------------------------------------------------ boards


def test_boards_show_knn_the_selected_layer_and_accuracy_against_layer():
    from harness.registry import load_registry
    from harness.report.boards import build_boards
    from harness.report.html import html_page
    from harness.report.leaderboard import markdown_page

    rows = []
    for seed in (0, 1):
        for layer, acc in (("-1", 60.0), ("0", 40.0), ("last2", 70.0)):
            for lr, shift in ((0.1, 0.0), (1.0, -5.0)):
                rows.append(make_row(aggregator="cls", seed=seed, layer=layer, lr=lr, val_top1=acc + shift + seed,
                                     test_top1=acc + shift))
    for k, acc in ((10, 55.0), (20, 58.0)):
        rows.append(make_row(aggregator="knn", aggregator_kind="knn", optimizer="none", lr=0.0,
                             swept_options=json.dumps({"k": k, "T": 0.07}), val_top1=acc, test_top1=acc))
    (board,) = build_boards(pd.DataFrame(rows), load_registry())
    assert board.aggregators == ("cls", "knn")
    cells = board.rows[0].cells
    assert cells["cls"].picks[0].text().startswith("seed 0: lr 0.1, wd 0, layer last2, val 70.00, test 70.00")
    assert cells["knn"].picks[0].text().startswith("seed 0: k 20, T 0.07, val 58.00") and not cells["knn"].edge
    (curve,) = board.layer_curves
    assert (curve.aggregator, curve.layers, curve.test_top1) == ("cls", ("0", "-1", "last2"), (40.0, 60.0, 70.0))
    page = html_page([board], "")
    assert "top-1 vs layer" in page and page.count('class="plot layer-plot"') == 1
    assert "cls: 0 40.00, -1 60.00, last2 70.00" in markdown_page([board], "")


def test_knn_in_the_online_protocol_reads_an_unaugmented_train_pass_in_the_summary_layout(tmp_path, monkeypatch):
    from harness.registry import load_registry
    from harness.run import trial
    from harness.run.plan import expand

    shapes = []
    original = trial.extract_tokens
    monkeypatch.setattr(trial, "extract_tokens", lambda *a, **k: shapes.append(k.get("summary_prefix"))
                        or original(*a, **k))
    path = tmp_path / "g.toml"
    path.write_text('backbones = ["demo-dino-tiny"]\ndatasets = ["digits"]\nprotocol = "online"\nepochs = 1\n'
                    'batch_size = 256\nseeds = [0]\n[heads.knn]\noptions = { k = [10], T = [0.07] }\n'
                    '[heads.cls]\noptimizer = "sgd"\nlr = [0.1]\n')
    reg = load_registry()
    (plan,) = expand(reg.grid(str(path)), reg)
    rows, _, _ = trial.run_trial(plan)
    assert {r["status"] for r in rows} == {"ok"} and shapes[0] == 1  # train: [cls] + patch mean only
    assert rows[0]["backbone_passes"] == 1144 + 203 + 450 + 1024  # + one augmented epoch of full batches
