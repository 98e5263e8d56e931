"""Named probe-training recipes: everything an official probe script sets beyond the grid's lr and wd, in one word.

A grid selects a recipe per head group (`recipe = "mae-linprobe"`); the recipe then fixes the optimizer and which
parameters take weight decay, how the lr scales with the batch, the lr and wd schedules and when they step,
gradient clipping, accumulation, the head's layers, its initialisation and the tokens it reads. Each recipe is
checked step by step against a trajectory of its official script (tests/fixtures/recipes, tests/test_recipes.py).
Where the harness deliberately departs from a script, that is a named option of the recipe, off by default
(`OPTIONS`). A head group without a recipe trains as the harness always did (`harness_default`).
Torch-free, so the registry validates grids against it without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from harness.errors import HarnessError

SCHEDULES = ("harness", "mae", "cosine", "vjepa")
DECAY_RULES = ("all", "matrices", "no-bias")
LINEAR_INITS = ("trunc_normal", "normal", "default")


@dataclass(frozen=True)
class Recipe:
    """How one official script trains its head (field comments say what each one sets)."""

    name: str
    source: str  # repository @ commit and the files the settings come from
    kinds: tuple[str, ...]  # aggregator kinds the script trains
    optimizer: str  # harness/heads/optim.py: lars, sgd or adamw
    scale_lr: bool  # the grid's lr is a base lr: effective lr = lr * batch / 256
    schedule: str  # SCHEDULES, see `lr_factor`
    decay: str  # which parameters take weight decay: every one, "matrices" (>= 2-D per head) or "no-bias"
    batchnorm: bool | None  # BatchNorm1d(affine=False, eps 1e-6) before the linear layer; None: the kind's default
    linear_init: str | None  # LINEAR_INITS (std 0.01, zero bias, for the first two); None: the kind's default
    warmup_start: float = 0.0  # vjepa schedule: the lr at step 0 of the warmup, as a fraction of the peak
    final_wd: float | None = None  # wd follows a cosine from the grid's wd to this; None: constant wd
    clip: float | None = None  # total gradient norm of each head clipped to this
    accum_iter: int = 1  # micro-batches per optimizer step (each its own forward and BatchNorm statistics)
    global_pool: bool = False  # MAE --global_pool: mean heads read the last block's raw tokens, then LayerNorm
    kind_options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()  # aggregator option defaults per kind

    def options_for(self, kind: str) -> dict[str, Any]:
        """The aggregator options this recipe sets for `kind` (a grid's own options override them)."""
        return dict(dict(self.kind_options).get(kind, ()))

    def pools_globally(self, kind: str) -> bool:
        """MAE --global_pool: a mean head averages the last block's tokens before the final norm ("prenorm"),
        then applies a frozen LayerNorm (eps 1e-6, weight 1, bias 0)."""
        return self.global_pool and kind == "mean"

    def tap_for(self, kind: str, tap: str) -> str:
        """The tokens a head of `kind` reads, given its aggregator's `tap`."""
        return "prenorm" if self.pools_globally(kind) else tap

    def describe(self) -> dict[str, Any]:
        """Every setting, for a configuration hash and for `harness show`."""
        return asdict(self)


_LARS_SCRIPT = dict(optimizer="lars", scale_lr=True, schedule="mae", decay="matrices", batchnorm=True)

RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("mae-linprobe",
           "facebookresearch/mae @ efb2a80: main_linprobe.py, util/lars.py, util/lr_sched.py, engine_finetune.py "
           "(BatchNorm1d(affine=False, eps 1e-6) + Linear with trunc_normal(0.01) weight and zero bias; LARS, 1-D "
           "parameters excluded from adaptation and decay; lr = blr * batch / 256; per-iteration warmup from lr 0, "
           "then half-cosine; [cls] after the final norm, or --global_pool: patch mean of the last block + "
           "LayerNorm)",
           ("cls", "mean"), **_LARS_SCRIPT, linear_init="trunc_normal", global_pool=True),
    Recipe("dinov2-linear",
           "facebookresearch/dinov2 @ b8931f7: dinov2/eval/linear.py (Linear with normal(0.01) weight and zero "
           "bias, no normalisation; SGD momentum 0.9; lr * batch / 256; CosineAnnealingLR stepped every "
           "iteration, no warmup; losses summed over heads)",
           ("cls", "cls_mean"), optimizer="sgd", scale_lr=True, schedule="cosine", decay="all", batchnorm=False,
           linear_init="normal"),
    Recipe("vjepa-attentive",
           "facebookresearch/jepa @ 51c59d5: evals/image_classification_frozen/eval.py, src/models/"
           "attentive_pooler.py, src/utils/schedulers.py (AttentiveClassifier, its Linear at PyTorch's default "
           "init; AdamW with two groups, biases and 1-D parameters undecayed; lr as given; WarmupCosineSchedule "
           "and CosineWDSchedule (wd to 1e-6) stepped before each forward; gradient norm clipped at 1.0)",
           ("query",), optimizer="adamw", scale_lr=False, schedule="vjepa", decay="no-bias", batchnorm=False,
           linear_init="default", warmup_start=1.0, final_wd=1e-6, clip=1.0),
    Recipe("ep-linprobe",
           "billpsomas/efficient-probing @ b8f4fb8: main_linprobe.py, probe_heads.py, poolings/ep.py "
           "(EfficientProbing with 32 queries on the last block's raw tokens, BatchNorm1d(affine=False, eps 1e-6) "
           "+ Linear at PyTorch's default init; LARS as MAE, the query tensor adapted; official wd 0)",
           ("ep",), **_LARS_SCRIPT, linear_init="default", kind_options=(("ep", (("num_queries", 32),)),)),
    Recipe("ep-poolings",
           "billpsomas/efficient-probing @ b8f4fb8: main_linprobe.py, probe_heads.py (POOLINGS: each pooling with "
           "its factory's defaults, then BatchNorm1d(affine=False, eps 1e-6) and the encoder's own head Linear, "
           "trunc_normal(0.01) weight and zero bias as main_linprobe sets it after loading; LARS as MAE; official "
           "wd 0)",
           ("simpool", "esimpool", "clip", "siglip", "aim", "cbam", "coca", "cait", "dinovit", "jepa", "dolg", "cae"),
           **_LARS_SCRIPT, linear_init="trunc_normal"),
    Recipe("beyond-cls-abmilp",
           "gmum/beyond_cls @ 22ed799: main_linprobe.py, abmilp.py, README ImageNet command (ABMILP depth 1, relu, "
           "no self-attention, no conditioning, patch tokens of the last block; BatchNorm1d(affine=False, eps "
           "1e-6) + Linear at PyTorch's default init; LARS as MAE; gradients accumulated over 2 micro-batches)",
           ("abmilp",), **_LARS_SCRIPT, linear_init="default", accum_iter=2,
           kind_options=(("abmilp", (("depth", 1), ("activation", "relu"), ("self_attention", "none"),
                                     ("cond", "none"), ("content", "patch"))),)),
)}

# The harness's deliberate departures, each off in the recipes: name -> (Recipe field, check, accepted values).
OPTIONS: dict[str, tuple[str, Any, str]] = {
    "batchnorm": ("batchnorm", lambda v: isinstance(v, bool), "true or false (BatchNorm before the linear layer)"),
    "global_pool": ("global_pool", lambda v: isinstance(v, bool),
                    "true or false (false: mean heads read their aggregator's tap, with no LayerNorm)"),
    "accum_iter": ("accum_iter", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                   "a positive integer (micro-batches per step)"),
    "warmup_start": ("warmup_start", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                     and 0 <= v <= 1, "a number in [0, 1] (start lr / lr of the vjepa warmup)"),
}


class RecipeError(HarnessError):
    """A recipe name or option a grid cannot use: `problem` and `accepted`, for the registry's message."""

    def __init__(self, problem: str, accepted: str):
        super().__init__(f"recipe field {problem}; accepted: {accepted}.")
        self.problem, self.accepted = problem, accepted


def resolve(name: str, options: dict[str, Any] | None = None) -> Recipe:
    """The named recipe with a grid's `recipe_options` applied; RecipeError names what is wrong."""
    if name not in RECIPES:
        raise RecipeError(f"names {name!r}, which is not a recipe", ", ".join(sorted(RECIPES)))
    changes = {}
    for key, value in (options or {}).items():
        if key not in OPTIONS:
            raise RecipeError(f"has unknown option {key!r}", ", ".join(sorted(OPTIONS)))
        field_name, valid, accepted = OPTIONS[key]
        if not valid(value):
            raise RecipeError(f"option {key!r} is {value!r}", accepted)
        changes[field_name] = value
    return replace(RECIPES[name], **changes)


def harness_default(optimizer: str) -> Recipe:
    """How a head group without a recipe trains: the optimizer preset, the kind's own head layers, and the
    harness schedule (warmup reaching the full lr at its last step, then half-cosine)."""
    return Recipe("", "harness", (), optimizer, optimizer in ("lars", "sgd"), "harness",
                  "matrices" if optimizer == "lars" else "all", None, None)


def effective_lr(recipe: Recipe, lr: float, batch_size: int) -> float:
    """The peak lr: `lr * batch / 256` where the script scales a base lr (MAE `blr`, DINOv2 `scale_lr`), else `lr`;
    `batch_size` is the effective batch of one optimizer step (all its micro-batches)."""
    return lr * batch_size / 256 if recipe.scale_lr else lr


def lr_factor(recipe: Recipe, step: int, total_steps: int, warmup_steps: int) -> float:
    """The multiplier of the peak lr at optimizer step `step` (from 0) of `total_steps`, as each script computes it.

    - harness: (step + 1) / warmup during the warmup, then half-cosine to 0 over the remaining steps.
    - mae (util/lr_sched.py, set before each step at the fractional epoch): step / warmup, so the first step has
      lr 0, then 0.5 * (1 + cos(pi * (step - warmup) / (total - warmup))), never quite reaching 0.
    - cosine (CosineAnnealingLR stepped after each step): 0.5 * (1 + cos(pi * step / total)); no warmup.
    - vjepa (WarmupCosineSchedule stepped before each forward, s = step + 1): start + s / warmup * (1 - start)
      while s < warmup, then 0.5 * (1 + cos(pi * (s - warmup) / (total - warmup))), 0 at the last step.
    """
    if recipe.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    if recipe.schedule == "vjepa":
        s = step + 1
        if s < warmup_steps:
            return recipe.warmup_start + s / warmup_steps * (1.0 - recipe.warmup_start)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * (s - warmup_steps) / max(total_steps - warmup_steps, 1))))
    if step < warmup_steps:  # mae starts at 0; the harness reaches the peak at the warmup's last step
        return (step + 1 if recipe.schedule == "harness" else step) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def wd_at(recipe: Recipe, wd: float, step: int, total_steps: int) -> float:
    """The weight decay at optimizer step `step` (from 0): the grid's, or V-JEPA's CosineWDSchedule (stepped
    before each forward) from it to `final_wd`, never past `final_wd`."""
    if recipe.final_wd is None:
        return wd
    final = recipe.final_wd
    value = final + (wd - final) * 0.5 * (1.0 + math.cos(math.pi * (step + 1) / total_steps))
    return max(final, value) if final <= wd else min(final, value)


def decayed(recipe: Recipe, name: str, per_head_ndim: int) -> bool:
    """Whether a parameter takes weight decay: LARS (MAE util/lars.py) decays and adapts only >= 2-D tensors;
    V-JEPA's init_opt exempts names containing 'bias' and 1-D tensors; torch's SGD and AdamW decay all."""
    if recipe.decay == "matrices":
        return per_head_ndim > 1
    if recipe.decay == "no-bias":
        return "bias" not in name and per_head_ndim != 1
    return True
