"""What one head of a trial is: the plan hashes it, the bank trains it, the trial's rows record it (no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.heads import recipes
from harness.heads.recipes import Recipe
from harness.registry import AggregatorEntry
from harness.tokens.layers import DEFAULT_LAYER


@dataclass(frozen=True)
class HeadSpec:
    """One head: its aggregator entry as it is trained (a recipe may change its tap) with the grid's options, its
    optimizer settings, seed and recipe (None: the harness's own training for `optimizer`); the config hash covers
    all of it and the trial's backbone and dataset."""

    head_id: str
    config_hash: str
    aggregator: AggregatorEntry
    options: dict
    optimizer: str
    lr: float
    wd: float
    seed: int
    recipe: Recipe | None = None
    layer: str = DEFAULT_LAYER  # the blocks it reads (harness.tokens.layers)
    recipe_label: str = ""  # the results' recipe column: its name and options, "" without a recipe

    @property
    def training(self) -> Recipe:
        return self.recipe or recipes.harness_default(self.optimizer)
