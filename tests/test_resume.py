"""Long trials survive a failure mid-way: a trial stopped at any step continues from its last checkpoint to the
rows, curves and test predictions of an uninterrupted run, bit for bit (one CPU thread), in both protocols."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from harness.data.order import EpochOrderSampler, SeededDraws, epoch_order
from harness.data.splits import load_splits
from harness.registry import load_registry
from harness.run import checkpoints
from harness.run.checkpoints import CheckpointRefused, Checkpointing, checkpoint_key, read_state, write_state
from harness.run.plan import expand
from harness.run.trial import run_trial

# how a run went, not what it computed: the columns two runs of one trial may differ in (a cached trial's backbone
# passes say whether its token cache was warm; an online one's count its training images and must match)
EXECUTION = ("wall_s", "started_at", "ended_at", "images_per_s", "device")

GRID = """
backbones = ["demo-mae-tiny"]
datasets = ["digits"]
protocol = "{protocol}"
epochs = 3
warmup_epochs = 1
batch_size = 32
seeds = [0, 1]

[heads.cls]
recipe = "mae-linprobe"
lr = [0.1, 1e30]  # the second diverges: its bookkeeping must survive the restart too

[heads.mean]
optimizer = "sgd"
lr = [0.3]

[heads.abmilp]
optimizer = "lars"
lr = [0.1]

[heads.ep]
recipe = "ep-linprobe"
lr = [0.05]
options = {{ num_queries = 2 }}
"""


class Killed(Exception):
    """The worker's death, raised from inside the trial at a chosen checkpoint."""


def _plan(tmp_path: Path, protocol: str):
    grid = tmp_path / f"{protocol}.toml"
    grid.write_text(GRID.format(protocol=protocol))
    reg = load_registry()
    (plan,) = expand(dataclasses.replace(reg.grid(str(grid)), limit_train=12), reg)
    return dataclasses.replace(plan, cache_dir=str(tmp_path / "cache"))


def _what_it_computed(result) -> tuple[list[dict], list[dict], list]:
    rows, curves, predictions = result
    skip = EXECUTION + (("backbone_passes",) if rows[0]["protocol"] == "cached" else ())
    return ([{k: v for k, v in r.items() if k not in skip} for r in rows], curves,
            sorted(predictions, key=lambda p: p["config_hash"]))


def _saving_to(folder: Path, key: str, kill_after: int | None = None):
    """A save that writes each checkpoint to its own subfolder, and raises Killed after `kill_after` of them."""
    saved: list[Path] = []

    def save(state: checkpoints.TrialState) -> None:
        target = folder / f"checkpoint_{len(saved):06d}"
        write_state(target, key, state)
        saved.append(target)
        if kill_after is not None and len(saved) == kill_after:
            raise Killed(state.position)
    return save, saved


@pytest.fixture(scope="module", params=["cached", "online"])
def trial(request, tmp_path_factory):
    """A short trial of each protocol and its uninterrupted result, with the number of checkpoints it writes."""
    tmp = tmp_path_factory.mktemp(request.param)
    plan = _plan(tmp, request.param)
    reference = _what_it_computed(run_trial(plan))
    save, saved = _saving_to(tmp / "all", checkpoint_key(plan))
    assert _what_it_computed(run_trial(plan, checkpointing=Checkpointing(save, every_s=0))) == reference
    positions = [read_state(f, checkpoint_key(plan)).position for f in saved]
    return plan, reference, positions, tmp


def test_checkpoints_are_written_at_every_step_boundary_with_every_s_zero(trial):
    plan, reference, positions, _ = trial
    steps = reference[0][0]["train_size"] // plan.batch_size
    assert [(p.epoch, p.step) for p in positions] == [(e, s) for e in range(plan.epochs) for s in range(steps)][1:]
    if plan.protocol == "online":  # the training images the backbone has seen, counted into the checkpoint
        assert [p.passes for p in positions] == [(e * steps + s) * plan.batch_size for e, s in
                                                 ((p.epoch, p.step) for p in positions)]


@pytest.mark.parametrize("where", ["mid-epoch", "epoch-end"])
def test_a_trial_killed_mid_way_continues_to_the_uninterrupted_result(trial, where):
    plan, reference, positions, tmp = trial
    key = checkpoint_key(plan)
    # epoch 1 (the second of three), at its 2nd step or at its start (the end of epoch 0)
    kill_at = next(i for i, p in enumerate(positions) if p.epoch == 1 and p.step == (2 if where == "mid-epoch" else 0))
    folder = tmp / f"killed-{where}"
    save, saved = _saving_to(folder, key, kill_after=kill_at + 1)
    with pytest.raises(Killed):
        run_trial(plan, checkpointing=Checkpointing(save, every_s=0))
    state = read_state(saved[-1], key)
    assert state.position == positions[kill_at]
    assert any(o["status"] == "diverged" for o in state.bank["outcomes"])  # retired before the kill, and restored
    resumed = run_trial(plan, checkpointing=Checkpointing(_saving_to(tmp / f"after-{where}", key)[0], every_s=0,
                                                          resume=state))
    assert _what_it_computed(resumed) == reference


def test_a_checkpoint_of_other_heads_or_damaged_bytes_is_refused(trial):
    plan, _, _, tmp = trial
    key = checkpoint_key(plan)
    save, saved = _saving_to(tmp / "refused", key, kill_after=3)
    with pytest.raises(Killed):
        run_trial(plan, checkpointing=Checkpointing(save, every_s=0))
    other = dataclasses.replace(plan, heads=plan.heads[:-1])
    with pytest.raises(CheckpointRefused, match="belongs to another trial"):
        read_state(saved[-1], checkpoint_key(other))
    state = read_state(saved[-1], key)
    with pytest.raises(CheckpointRefused, match="does not fit this trial's heads"):  # a key forged onto other heads
        run_trial(other, checkpointing=Checkpointing(lambda s: None, every_s=0, resume=state))
    data = bytearray((saved[-1] / checkpoints.TENSORS).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (saved[-1] / checkpoints.TENSORS).write_bytes(bytes(data))
    with pytest.raises(CheckpointRefused, match="not the file its checkpoint recorded"):
        read_state(saved[-1], key)
    (saved[-2] / checkpoints.STATE).write_text("{")  # cut short while written
    with pytest.raises(CheckpointRefused, match="unreadable"):
        read_state(saved[-2], key)


def test_the_latest_checkpoint_of_a_trial_is_found_and_discarded_once_its_rows_are_stored(tmp_path):
    def state(epoch: int, step: int) -> checkpoints.TrialState:
        from harness.heads.train import Position

        return checkpoints.TrialState(Position(epoch, step), {"outcomes": [], "groups": []}, {"x": torch.zeros(1)})

    root = tmp_path / checkpoints.FOLDER
    for sweep, trial_dir, key, (epoch, step) in [("sweep-a", "t0", "k1", (3, 0)), ("sweep-b", "t0", "k1", (2, 9)),
                                                  ("sweep-b", "t1", "k2", (0, 4)), ("sweep-a", "t0", "k1", (3, 1))]:
        write_state(root / sweep / trial_dir / f"checkpoint_{epoch}{step}", key, state(epoch, step))
    (root / "sweep-c" / "t0" / "checkpoint_000000").mkdir(parents=True)  # killed before its JSON: skipped
    assert checkpoints.latest(root, "k1") == root / "sweep-a" / "t0" / "checkpoint_31"
    (root / "sweep-a" / "t0" / "checkpoint_31" / checkpoints.TENSORS).write_bytes(b"cut short")
    assert checkpoints.latest(root, "k1") == root / "sweep-a" / "t0" / "checkpoint_30"  # the furthest intact one
    assert checkpoints.latest(root, "k3") is None
    (root / "sweep-d" / "t0").mkdir(parents=True)  # another sweep sharing the folder, no checkpoint yet
    (root / "sweep-e" / "t0").mkdir(parents=True)  # this one's, its trials all stored
    checkpoints.discard(root, {"k1"}, own="sweep-e")
    assert sorted(p.name for p in root.iterdir()) == ["sweep-b", "sweep-c", "sweep-d"]
    assert checkpoints.latest(root, "k2") is not None and checkpoints.latest(root, "k1") is None


def test_each_image_draws_its_augmentation_from_its_epoch_and_index_alone():
    reg = load_registry()
    view = load_splits(reg.dataset("digits"), reg.backbone("demo-mae-tiny"), augment=True).augmented
    draws = SeededDraws(view)
    sampler = EpochOrderSampler(len(view), seed=4)
    first = {i: draws[(i, s)][0] for i, s in list(sampler)[:6]}  # epoch 0, in its order
    sampler.start(0, skip=3)  # restarted at its 4th image: the same images, drawn the same
    again = list(sampler)
    assert [i for i, _ in again] == epoch_order(len(view), 4, 0)[3:].tolist()
    for i, s in again[:3]:
        torch.rand(5)  # whatever else consumed the global generator in between
        assert torch.equal(draws[(i, s)][0], first[i])
    later = dict(list(sampler))  # epoch 1: other crops of the same images
    assert not all(torch.equal(draws[(i, later[i])][0], first[i]) for i in first)


def test_checkpoints_at_epoch_ends_are_skipped_while_they_would_cost_more_than_their_share():
    now = [0.0]
    saved = []

    class Bank:
        def state(self):
            now[0] += 1.0  # a checkpoint takes 1 s
            return {}, {}

    from harness.heads.train import Position

    c = Checkpointing(saved.append, every_s=600, clock=lambda: now[0])
    reached = c.hook(Bank())
    for epoch in range(1, 60):
        now[0] += 2.0  # 2 s epochs: one checkpoint every 20 s of training keeps them at 5%
        reached(Position(epoch), True)
    assert [s.position.epoch for s in saved][:4] == [1, 11, 21, 31]
    now[0] += 700.0  # a long epoch: checkpointed mid-way at the next step boundary
    reached(Position(60, 5), False)
    assert saved[-1].position == Position(60, 5)
    assert json.dumps(dataclasses.asdict(saved[-1].position))  # positions are JSON


@pytest.mark.parametrize("error, why", [
    # a multi-node cluster whose checkpoint folder this node does not share: Tune raises from `report`
    (RuntimeError("Unable to set up cluster storage with the following settings:\nStorageContext<...>"),
     "Unable to set up cluster storage"),
    (OSError(28, "No space left on device"), "No space left on device"),
])
def test_a_checkpoint_tune_cannot_store_turns_checkpoints_off_and_the_trial_trains_on(error, why):
    from harness.heads.train import Position
    from harness.run.sweep import _TuneCheckpoints

    reports = []

    def report(metrics, checkpoint=None):
        if checkpoint is not None:
            raise error
        reports.append(metrics)

    save = _TuneCheckpoints("key", report)
    state = checkpoints.TrialState(Position(1), {"outcomes": [], "groups": []}, {"x": torch.zeros(1)})
    save(state)
    save(state)  # off now: no second attempt, no second note
    assert len(reports) == 1 and "checkpoints are off for this trial" in reports[0]["note"]
    assert why in reports[0]["note"] and "--checkpoint-dir" in reports[0]["note"]


def test_an_unwritable_checkpoint_folder_is_refused_before_ray_starts(tmp_path, capsys):
    from harness.cli import main

    (tmp_path / "file").write_text("")
    code = main(["sweep", "--grid", "tests/grids/tiny.toml", "--results-dir", str(tmp_path / "results"),
                 "--checkpoint-dir", str(tmp_path / "file" / "checkpoints")])
    err = capsys.readouterr().err
    assert code == 2 and "checkpoint folder" in err and "--checkpoint-dir" in err and "Traceback" not in err


def test_the_key_names_the_trials_heads_weights_and_code(tmp_path, monkeypatch):
    plan = _plan(tmp_path, "online")
    key = checkpoint_key(plan)
    assert checkpoint_key(plan) == key and len(key) == 64
    assert checkpoint_key(dataclasses.replace(plan, heads=plan.heads[1:])) != key
    assert checkpoint_key(dataclasses.replace(plan, weights_sha256="ab" * 32)) != key
    monkeypatch.setattr(checkpoints, "source_digest", lambda: "edited")  # the code changed between two attempts
    assert checkpoint_key(plan) != key
