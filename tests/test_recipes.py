"""Recipe parity: each named recipe, trained by the head bank beside other heads, follows its official script's
trajectory step by step (tests/fixtures/recipes: lr, wd and loss of every step, the head's parameters and
BatchNorm statistics at every checkpoint, eval logits). Sizes, hyperparameters and tolerances come from each
manifest, so another folder of the same form (HARNESS_FIXTURES_DIR) is tested unchanged."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from harness.errors import HarnessError
from harness.heads.bank import HeadBank, HeadSpec
from harness.heads.recipes import RECIPES, Recipe, resolve
from harness.registry import AggregatorEntry, load_registry
from harness.run.plan import expand
from harness.run.trial import run_trial
from harness.tokens.layers import DEFAULT_LAYER, tap_name
from conftest import manifests
from single_thread import one_thread  # noqa: F401 (autouse fixture)


@dataclass
class Case:
    """One head under test: how the harness runs the official configuration, and how its keys map to ours."""

    recipe: Recipe
    kind: str
    options: dict
    lr: float
    wd: float
    warmup_steps: int
    keys: dict[str, str | None]  # official key prefix -> ours; None: a parameter the official head never uses
    embed_dim: int
    num_heads: int = 1
    head_name: str | None = None  # DINOv2: the head's name in its dict-valued entries
    layer: str = DEFAULT_LAYER  # the blocks it reads (DINOv2: "last<n>")


_BN_LINEAR = {"0.": "norm.", "1.": "linear."}
_POOL_BN_LINEAR = {"1.": "norm.", "2.": "linear."}


def _mae(m: dict, variant: str) -> list[Case]:
    hp, ipe = m["hyperparameters"], m["sizes"]["iterations_per_epoch"]
    assert hp["eff_batch_size"] == m["sizes"]["B"] and hp["min_lr"] == 0.0 and hp["max_norm (gradient clipping)"] is None
    wd = hp["weight_decay of variant cls_wd"] if variant == "cls_wd" else hp["weight_decay"]
    kind = "mean" if variant in ("global_pool", "mean_bn") else "cls"
    recipe = resolve("mae-linprobe", {"global_pool": False} if variant == "mean_bn" else {})
    return [Case(recipe, kind, {}, hp["blr"], wd, hp["warmup_epochs"] * ipe, _BN_LINEAR, m["sizes"]["D"])]


def _ep(m: dict, variant: str) -> list[Case]:
    hp, ipe = m["hyperparameters"], m["sizes"]["iterations_per_epoch"]
    recipe = resolve("ep-linprobe")
    assert recipe.options_for("ep")["num_queries"] == m["official_defaults"]["ep_queries"]
    ep = hp["EfficientProbing"]
    assert ep["num_heads"] == 1 and ep["qk_scale"] is None and hp["accum_iter"] == 1
    options = {"num_queries": hp["ep_queries"], "d_out": hp["d_out"], "qkv_bias": ep["qkv_bias"],
               "content": "all" if variant == "ep_all" else "patch"}
    keys = {"0.cls_token": "pooler.queries", "0.v.": "pooler.v.", **_POOL_BN_LINEAR}
    return [Case(recipe, "ep", options, hp["blr"], hp["weight_decay"], hp["warmup_epochs"] * ipe, keys,
                 m["sizes"]["D"])]


def _abmilp(m: dict, variant: str) -> list[Case]:
    hp, ipe = m["hyperparameters"], m["sizes"]["iterations_per_epoch"]
    accum = hp["variants"][variant]["accum_iter"]
    assert hp["variants"][variant]["eff_batch_size"] == m["sizes"]["B"]
    recipe = resolve("beyond-cls-abmilp", {} if accum == RECIPES["beyond-cls-abmilp"].accum_iter
                     else {"accum_iter": accum})
    official = {"depth": hp["abmilp_depth"], "activation": hp["abmilp_act"], "self_attention": hp["abmilp_sa"],
                "cond": hp["abmilp_cond"], "content": hp["abmilp_content"]}
    assert recipe.options_for("abmilp") == official  # the README setting is the recipe's own
    readme = m["official_defaults"]["README ImageNet command"]
    assert RECIPES["beyond-cls-abmilp"].accum_iter == int(re.search(r"--accum_iter (\d+)", readme).group(1))
    keys = {"0.attention_predictor.": "pooler.attention_predictor.", "0.pos_embed": None, **_POOL_BN_LINEAR}
    return [Case(recipe, "abmilp", {}, hp["blr"], hp["weight_decay"], hp["warmup_epochs"] * ipe, keys,
                 m["sizes"]["D"])]


def _vjepa(m: dict, variant: str) -> list[Case]:
    hp = m["hyperparameters"]
    v, ac = hp["variants"][variant], hp["AttentiveClassifier"]
    assert hp["final_lr"] == 0.0 and ac["qkv_bias"] and ac["complete_block"]
    lr = hp["lr (ref_lr)"]
    recipe = resolve("vjepa-attentive", {"warmup_start": v["start_lr"] / lr})
    assert recipe.final_wd == hp["final_wd"] and recipe.clip == hp["clip_grad_norm_"]
    options = {"num_queries": ac["num_queries"], "depth": ac["depth"], "mlp_ratio": ac["mlp_ratio"],
               "num_heads": ac["num_heads"]}
    block = "pooler.cross_attention_block."
    keys = {"pooler.query_tokens": "pooler.query_tokens", block + "norm1.": "pooler.norm1.",
            block + "xattn.q.": "pooler.q.", block + "xattn.kv.": "pooler.kv.", block + "xattn.proj.": None,
            block + "norm2.": "pooler.norm2.", block + "mlp.": "pooler.mlp.", "linear.": "linear."}
    return [Case(recipe, "query", options, lr, v["weight_decay (ref_wd)"], v["warmup_steps = int(warmup * ipe)"],
                 keys, ac["embed_dim"], ac["num_heads"])]


def _dinov2(m: dict, variant: str) -> list[Case]:
    """Each head reads the [cls] tokens of the last n blocks (oldest first), then, if avgpool, the last block's
    patch mean: a `cls` or `cls_mean` head on layer "last<n>"; all of them in one bank, as DINOv2 trains them."""
    hp = m["hyperparameters"]
    assert hp["SGD"] == {"momentum": 0.9, "weight_decay": 0, "dampening": 0, "nesterov": False}
    assert hp["max_iter"] == m["sizes"]["K"]
    recipe = resolve("dinov2-linear")
    cases = []
    for head in m["variants"][variant]["heads"]:
        base = next(lr for lr in hp["learning_rates"] if abs(lr * hp["batch_size"] / 256 - head["lr_scaled"]) < 1e-12)
        prefix = f"classifiers_dict.{head['name']}."
        cases.append(Case(recipe, "cls_mean" if head["use_avgpool"] else "cls", {}, base, 0.0, 0,
                          {prefix + "linear.": "linear."}, m["sizes"]["D"], head_name=head["name"],
                          layer=f"last{head['use_n_blocks']}"))
    return cases


BUILDERS = {"mae_linprobe": _mae, "ep_linprobe": _ep, "beyond_cls_abmilp": _abmilp, "vjepa_attentive": _vjepa,
            "dinov2_linear": _dinov2}
CASES = [(path, variant) for path in manifests("recipe")
         for variant in json.loads(path.read_text())["variants"]]


def _taps(data: dict, split: str) -> tuple[dict[str, torch.Tensor], int]:
    """The fixture's tokens of `split` under the bank's tap names, and the number of blocks they come from: the
    last block only, or (DINOv2) each of the last blocks, after the final norm as get_intermediate_layers gives."""
    if f"{split}_blocks" not in data:
        return {"norm": data[f"{split}_tokens"], "prenorm": data[f"{split}_tokens"]}, 1
    blocks = data[f"{split}_blocks"]
    return {tap_name(b, True, len(blocks)): x for b, x in enumerate(blocks)}, len(blocks)


def _ours(key: str, keys: dict[str, str | None]) -> str | None:
    prefix = next(p for p in keys if key.startswith(p))
    return None if keys[prefix] is None else keys[prefix] + key[len(prefix):]


def _same_linear_init(ours: dict, official: dict) -> None:
    """The recipe draws the classifier as the script does: the weight's spread (std 0.01, or PyTorch's default
    1/sqrt(3 fan_in)) agrees within sampling error, and the bias is zero exactly where the script's is."""
    ratio = ours["linear.weight"].std().item() / official["linear.weight"].std().item()
    assert 0.8 < ratio < 1.25, f"linear weight std {ratio:.2f} x the official"
    assert bool(ours["linear.bias"].any()) == bool(official["linear.bias"].any()), "zero bias or PyTorch's default"


def _spec(case: Case, name: str, lr: float, recipe: Recipe | None = None, optimizer: str = "") -> HeadSpec:
    return HeadSpec(name, name, AggregatorEntry(case.kind, case.kind, "norm"), case.options,
                    optimizer or case.recipe.optimizer, lr, case.wd, 0, recipe, case.layer)


def _specs(cases: list[Case]) -> list[HeadSpec]:
    """The heads under test first, then a neighbour in the first one's stack at another lr, and heads of other
    kinds and recipes."""
    first = cases[0]
    return [*(_spec(c, f"under-test-{i}", c.lr, c.recipe) for i, c in enumerate(cases)),
            _spec(first, "neighbour", first.lr * 0.5, first.recipe), _spec(first, "no-recipe", 0.3, optimizer="sgd"),
            HeadSpec("other-recipe", "o", AggregatorEntry("cls", "cls", "norm"), {}, "adamw", 1e-3, 0.05, 0)]


def _close(actual: torch.Tensor, expected: torch.Tensor, atol: float, what: str) -> None:
    err = (actual - expected).abs().max().item()
    assert err <= atol, f"{what}: max |diff| {err:.3g} > {atol:g}"


def _run(folder: Path, variant: str, cases: list[Case], m: dict, alone: bool = False) -> None:
    """Every head of `cases` trained in one bank beside other heads (none if `alone`); each follows its own
    trajectory."""
    sizes, tol = m["sizes"], m["tolerance"]
    data = torch.load(folder / "data.pt", weights_only=True)
    traj = torch.load(folder / m["variants"][variant]["file"], weights_only=True)
    steps = sizes["K"]
    for name, value in traj.get("fixed_modules", {}).items():  # MAE's global-pool LayerNorm: weight 1, bias 0
        assert torch.equal(value, torch.ones_like(value) if name.endswith("weight") else torch.zeros_like(value))
    train, depth = _taps(data, "train")
    evaluation, _ = _taps(data, "eval")
    warmups = {c.warmup_steps for c in cases}
    assert len(warmups) == 1
    specs = [_spec(c, f"under-test-{i}", c.lr, c.recipe) for i, c in enumerate(cases)] if alone else _specs(cases)
    bank = HeadBank(specs, embed_dim=cases[0].embed_dim, num_heads=cases[0].num_heads,
                    num_prefix_tokens=sizes["T"] - sizes["n_patch_tokens"], num_classes=sizes["C"],
                    batch_size=sizes["B"], total_steps=steps, warmup_steps=warmups.pop(), depth=depth)
    assert len(bank.live()) == len(bank.specs)

    def pick(entry, case: Case):  # DINOv2 stores one entry per head
        return entry[case.head_name] if case.head_name else entry

    for i, case in enumerate(cases):
        state = bank.head_state(i)
        mine = [k for k in traj["init"] if k.startswith(tuple(case.keys))]
        assert case.head_name or len(mine) == len(traj["init"]), "every official key is mapped"
        init = {_ours(k, case.keys): traj["init"][k] for k in mine}
        _same_linear_init(state, init)
        with torch.no_grad():
            for name, value in init.items():
                if name is not None and value.is_floating_point():
                    state[name].copy_(value)
        assert {n for n in init if n is not None} == set(state), "every parameter of the head is loaded"
        _close(bank.logits(i, evaluation), pick(traj["eval_logits_init"], case), tol["eval_logits_atol"],
               f"{case.head_name or variant}: eval_logits_init")
    lrs = traj["lr"].view(steps, -1)  # one column per head (DINOv2), else one
    losses = traj["loss_per_head"] if cases[0].head_name else traj["loss"].view(steps, -1)
    for s in range(1, steps + 1):
        idx = data["batch_order"][s - 1]
        bank.step({tap: x[idx] for tap, x in train.items()}, data["train_labels"][idx])
        for i, case in enumerate(cases):
            used, what = bank.last_step(i), f"{case.head_name or variant} at step {s}"
            expected_lr = lrs[s - 1, i if case.head_name else 0].item()
            assert abs(used["lr"] - expected_lr) <= tol["lr_rel"] * max(abs(expected_lr), 1e-12), what
            if "wd" in traj:
                wd_decayed, wd_excluded = traj["wd"][s - 1].tolist()
                assert wd_excluded == 0.0
                assert abs(used["wd"] - wd_decayed) <= tol["lr_rel"] * max(abs(wd_decayed), 1e-12), what
            expected_loss = losses[s - 1, i] if case.head_name else losses[s - 1]
            _close(torch.tensor(used["losses"]).view(-1), expected_loss.view(-1), tol["loss_atol"], f"loss, {what}")
            if s not in sizes["checkpoint_steps"]:
                continue
            state = bank.head_state(i)
            for key, expected in traj[f"step_{s}"].items():
                if not key.startswith(tuple(case.keys)):
                    continue
                name = _ours(key, case.keys)
                if name is None:  # never applied by the official head: it must never have changed
                    assert torch.equal(expected, traj["init"][key]), key
                elif expected.is_floating_point():
                    _close(state[name], expected, tol["params_atol"], f"{key} after step {s}")
                else:
                    assert state[name].item() == expected.item(), f"{key} after step {s}"
    for i, case in enumerate(cases):
        _close(bank.logits(i, evaluation), pick(traj["eval_logits"], case), tol["eval_logits_atol"],
               f"{case.head_name or variant}: eval_logits")
    assert len(bank.live()) == len(bank.specs)


@pytest.mark.parametrize("folder,variant", [(p.parent, v) for p, v in CASES],
                         ids=[f"{p.parent.name}-{v}" for p, v in CASES])
def test_recipe_follows_the_official_trajectory(folder: Path, variant: str):
    m = json.loads((folder / "manifest.json").read_text())
    _run(folder, variant, BUILDERS[m["recipe"]](m, variant), m)


@pytest.mark.parametrize("variant", ["cls", "cls_wd"])
def test_a_one_head_lars_group_follows_the_mae_fixture(variant: str):
    """The hand-written cross-entropy gradient of a linear group of one head, under LARS (with and without decay),
    against every step of MAE's trajectory (20 in the visible fixture)."""
    (path,) = [p for p in manifests("recipe") if json.loads(p.read_text())["recipe"] == "mae_linprobe"]
    m = json.loads(path.read_text())
    _run(path.parent, variant, _mae(m, variant), m, alone=True)


def _rearranged(folder: Path, out: Path, cases: list[Case], seed: int) -> None:
    """The same fixture with its classes, training samples, evaluation samples and patch tokens permuted (and the
    channels where every head is linear in them, MAE's), the trajectories mapped to match: an equivalent folder
    in which no hard-coded label, index or token position would still line up."""
    m = json.loads((folder / "manifest.json").read_text())
    out.mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps(m))
    s, g = m["sizes"], torch.Generator().manual_seed(seed)
    prefix = s["T"] - s["n_patch_tokens"]
    classes, train, evaluation = (torch.randperm(n, generator=g) for n in (s["C"], s["n_train"], s["n_eval"]))
    tokens = torch.cat([torch.arange(prefix), prefix + torch.randperm(s["n_patch_tokens"], generator=g)])
    channels = torch.randperm(s["D"], generator=g) if m["recipe"] == "mae_linprobe" else torch.arange(s["D"])
    data = torch.load(folder / "data.pt", weights_only=True)
    new = {"train_tokens": data["train_tokens"][train][:, tokens][..., channels],
           "eval_tokens": data["eval_tokens"][evaluation][:, tokens][..., channels],
           "train_labels": classes[data["train_labels"][train]], "eval_labels": classes[data["eval_labels"][evaluation]],
           "batch_order": torch.argsort(train)[data["batch_order"]]}
    if "train_blocks" in data:
        new |= {"train_blocks": data["train_blocks"][:, train][:, :, tokens],
                "eval_blocks": data["eval_blocks"][:, evaluation][:, :, tokens]}
    torch.save(new, out / "data.pt")
    back = torch.argsort(classes)

    def state(sd: dict) -> dict:
        mapped = {}
        for key, v in sd.items():
            if any(key.startswith(tuple(c.keys)) and (_ours(key, c.keys) or "").startswith("linear.") for c in cases):
                v = v[back] if v.dim() == 1 or v.shape[1] != s["D"] else v[back][:, channels]
            elif key.endswith(("running_mean", "running_var")):
                v = v[channels]
            mapped[key] = v
        return mapped

    def logits(x):
        return {k: logits(v) for k, v in x.items()} if isinstance(x, dict) else x[evaluation][:, back]

    for v in m["variants"].values():
        traj = torch.load(folder / v["file"], weights_only=True)
        traj |= {k: state(traj[k]) for k in traj if k == "init" or k.startswith("step_")}
        traj |= {k: logits(traj[k]) for k in ("eval_logits", "eval_logits_init")}
        torch.save(traj, out / v["file"])


@pytest.mark.parametrize("folder,variant", [(p.parent, v) for p, v in CASES],
                         ids=[f"{p.parent.name}-{v}" for p, v in CASES])
def test_recipe_parity_holds_on_a_rearranged_fixture(folder: Path, variant: str, tmp_path: Path):
    m = json.loads((folder / "manifest.json").read_text())
    cases = BUILDERS[m["recipe"]](m, variant)
    _rearranged(folder, tmp_path / folder.name, cases, seed=1)
    _run(tmp_path / folder.name, variant, cases, m)


def test_vjepa_decay_groups_are_the_official_ones():
    """The recipe's decay rule puts exactly the manifest's parameters in V-JEPA's decayed group."""
    for path in manifests("recipe"):
        m = json.loads(path.read_text())
        if m["recipe"] != "vjepa_attentive":
            continue
        (case,) = _vjepa(m, next(iter(m["variants"])))
        s = m["sizes"]
        bank = HeadBank(_specs([case])[:1], embed_dim=case.embed_dim, num_heads=case.num_heads,
                        num_prefix_tokens=s["T"] - s["n_patch_tokens"], num_classes=s["C"], batch_size=s["B"],
                        total_steps=s["K"], warmup_steps=0)
        (group,) = bank.groups
        ours = {name for name, d in zip(group.names(), group.decayed) if d}
        groups = m["hyperparameters"]["param_groups"]
        official = {_ours(k, case.keys) for k in groups["0 (decayed)"]} - {None}
        excluded = {_ours(k, case.keys) for k in groups["1 (WD_exclude, weight_decay 0)"]} - {None}
        assert ours == official and not ours & excluded and ours | excluded == set(group.names())


GRID = """
description = "Every recipe in one demo trial."
backbones = ["demo-mae-tiny"]
datasets = ["digits"]
epochs = 2
warmup_epochs = 1
batch_size = 128
seeds = [0]

[heads.cls]
recipe = "dinov2-linear"
lr = [0.1]

[heads.mean]
recipe = "mae-linprobe"
lr = [0.1]

[heads.abmilp]
recipe = "beyond-cls-abmilp"
lr = [0.1]

[heads.query]
recipe = "vjepa-attentive"
lr = [1e-3]
wd = [1e-3]

[heads.ep]
recipe = "ep-linprobe"
lr = [0.1]
"""


def _grid(tmp_path: Path, text: str):
    path = tmp_path / "recipes.toml"
    path.write_text(text)
    return load_registry().grid(str(path))


def test_a_grid_selects_a_recipe_in_one_word_and_a_trial_trains_by_it(tmp_path: Path):
    grid = _grid(tmp_path, GRID)
    assert {h.aggregator: (h.recipe, h.optimizer) for h in grid.heads} == {
        "cls": ("dinov2-linear", "sgd"), "mean": ("mae-linprobe", "lars"), "abmilp": ("beyond-cls-abmilp", "lars"),
        "query": ("vjepa-attentive", "adamw"), "ep": ("ep-linprobe", "lars")}
    (trial,) = expand(grid, load_registry())
    plain = expand(_grid(tmp_path, GRID.replace('recipe = "dinov2-linear"', 'optimizer = "sgd"')), load_registry())[0]
    assert trial.heads[0].config_hash != plain.heads[0].config_hash  # the recipe is part of the configuration
    assert trial.heads[1:] == plain.heads[1:]
    rows, curves, _ = run_trial(trial)
    by_agg = {r["aggregator"]: r for r in rows}
    assert by_agg["cls"]["recipe"] == "dinov2-linear"  # the row names its recipe
    assert all(r["status"] == "ok" for r in rows), [(r["aggregator"], r["error"]) for r in rows]
    assert {r["aggregator"]: r["recipe"] for r in rows} == {h.aggregator: h.recipe for h in grid.heads}
    assert by_agg["mean"]["token_tap"] == "prenorm"  # MAE --global_pool reads the last block before its norm
    assert json.loads(by_agg["ep"]["aggregator_options"])["num_queries"] == RECIPES["ep-linprobe"].options_for("ep")[
        "num_queries"]
    assert len(curves) == 2 * len(rows)


@pytest.mark.parametrize("change,field_name,accepted", [
    ('recipe = "mae-linprob"', "heads.cls.recipe", "beyond-cls-abmilp, dinov2-linear"),
    ('recipe = "vjepa-attentive"', "heads.cls.recipe", "dinov2-linear, mae-linprobe"),
    ('recipe = "dinov2-linear"\noptimizer = "lars"', "heads.cls.optimizer", "'sgd' or no optimizer field"),
    ('recipe = "dinov2-linear"\nrecipe_options = { batchnorms = true }', "heads.cls.recipe_options", "accum_iter"),
    ('recipe = "dinov2-linear"\nrecipe_options = { batchnorm = 1 }', "heads.cls.recipe_options", "true or false"),
    ('optimizer = "sgd"\nrecipe_options = { batchnorm = true }', "heads.cls.recipe_options", "a recipe field"),
])
def test_a_bad_recipe_field_names_the_field_and_what_is_accepted(tmp_path: Path, change: str, field_name: str,
                                                                 accepted: str):
    with pytest.raises(HarnessError) as e:
        _grid(tmp_path, GRID.replace('recipe = "dinov2-linear"', change))
    assert f"field '{field_name}'" in str(e.value) and accepted in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("options,batchnorm", [({}, False), ({"batchnorm": True}, True)])
def test_a_departure_from_a_recipe_is_a_named_option_off_by_default(options: dict, batchnorm: bool):
    """BatchNorm before a DINOv2-style head is the harness's choice, never the recipe's unless asked for."""
    spec = HeadSpec("cls", "h", AggregatorEntry("cls", "cls", "norm"), {}, "sgd", 0.1, 0.0, 0,
                    resolve("dinov2-linear", options))
    bank = HeadBank([spec], embed_dim=8, num_heads=1, num_prefix_tokens=1, num_classes=3, batch_size=4,
                    total_steps=2, warmup_steps=0)
    assert ("norm.running_mean" in bank.head_state(0)) == batchnorm
