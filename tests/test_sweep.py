"""The sweep: grids with per-dataset settings, plans and their cost, CLI messages, and (slow) real Ray runs.

The slow tests share one Ray head node started for this module (2 CPUs, 2 logical GPUs, its own temp dir, ports and
auth token) and stopped by process group. Failures are real ones: backbones whose weights come from a local HTTP
server that answers 503 once (a flaky download, retried) or serves a corrupt file (fails every attempt).
"""

from __future__ import annotations

import dataclasses
import http.server
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from harness.results import store
from harness.cli import main
from harness.errors import HarnessError
from harness.run.plan import expand, trial_cost, without_done
from harness.registry import REGISTRY_DIR, load_registry
from raynodes import auth_env, start_head

ROOT = Path(__file__).resolve().parent.parent
TINY = "tests/grids/tiny.toml"


def _grid_file(tmp_path: Path, body: str) -> str:
    path = tmp_path / "g.toml"
    path.write_text('backbones = ["demo-mae-tiny", "demo-dino-tiny"]\ndatasets = ["digits", "cifar10"]\n'
                    'epochs = 5\nbatch_size = 64\nseeds = [0, 1]\n[heads.cls]\noptimizer = "sgd"\nlr = [0.1, 1.0]\n'
                    + body)
    return str(path)


# ------------------------------------------------------------------------------------------------- plans


def test_full_grid_runs_imagenet_online_and_transfer_sets_cached():
    reg = load_registry()
    grid = reg.grid("full")
    trials = expand(grid, reg)
    assert len(trials) == 7 * 9 and {t.backbone for t in trials} >= {"mae-vit-b16", "ijepa-vit-h14-in1k",
                                                                    "dinov2-vit-b14-reg4", "dinov3-vit-b16"}
    poolings = {a.aggregator for a in reg.grid("poolings").heads} - {"cls", "abmilp", "ep"}  # that grid's alone
    assert {a.aggregator for a in grid.heads} == {a for a, e in reg.aggregators.items()
                                                  if a not in poolings and a.removesuffix("_all") not in poolings}
    assert grid.seeds == (0, 1, 2)
    for t in trials:
        expected = ("online", 90, 16384, 10) if t.dataset == "imagenet-1k" else ("cached", 100, 256, 10)
        assert (t.protocol, t.epochs, t.batch_size, t.warmup_epochs) == expected, t.dataset
        assert len(t.heads) == grid.num_heads
    # LARS lrs are base rates (x batch/256): the published blr 0.1 (effective 6.4 on ImageNet, 0.1 on the transfer
    # sets) sits inside every LARS grid with at least three points on either side
    heads = {h.aggregator: h for h in grid.heads}
    for name in ("cls", "mean", "abmilp", "ep"):
        lrs = sorted(heads[name].lrs)
        assert any(math.isclose(lr, 0.1) for lr in lrs) and lrs[2] < 0.1 < lrs[-3], name
        assert min(lrs) * 16384 / 256 < 6.4 < max(lrs) * 16384 / 256
    assert (heads["ep"].recipe, heads["ep"].optimizer, heads["ep"].wds) == ("ep-linprobe", "lars", (0.0,))
    assert heads["query"].recipe == "vjepa-attentive" and min(heads["query"].wds) < 1e-3 < max(heads["query"].wds)
    assert min(heads["query"].lrs) < 1e-3 < max(heads["query"].lrs) and 1e-3 in heads["query"].wds


def test_dataset_override_changes_only_that_datasets_hashes(tmp_path):
    reg = load_registry()
    base = expand(reg.grid(_grid_file(tmp_path, "")), reg)
    over = expand(reg.grid(_grid_file(tmp_path, "[overrides.cifar10]\nprotocol = \"online\"\nepochs = 3\n")), reg)
    for a, b in zip(base, over):
        same = [h.config_hash for h in a.heads] == [h.config_hash for h in b.heads]
        assert same == (a.dataset == "digits") and (a.trial_id == b.trial_id) == same
        assert (b.protocol, b.epochs) == (("online", 3) if b.dataset == "cifar10" else ("cached", 5))
    assert len({h.config_hash for t in base for h in t.heads}) == sum(len(t.heads) for t in base)


@pytest.mark.parametrize("body, field", [
    ("[overrides.cifar11]\nepochs = 3\n", "overrides.cifar11"),
    ("[overrides.cifar10]\nlr = 3\n", "overrides.cifar10.lr"),
    ("[overrides.cifar10]\nprotocol = \"streamed\"\n", "overrides.cifar10.protocol"),
    ("[overrides.cifar10]\nepochs = 3\nwarmup_epochs = 3\n", "overrides.cifar10.warmup_epochs"),
])
def test_bad_overrides_name_the_field(tmp_path, body, field):
    with pytest.raises(HarnessError, match=f"'{field}'"):
        load_registry().grid(_grid_file(tmp_path, body))


@pytest.mark.parametrize("margin", ["-0.5", "0", "inf", "nan"])
def test_claim_margin_must_be_finite_and_positive(tmp_path, margin):
    """A negative margin would turn "cls better" into "mean better": the grid is refused."""
    path = tmp_path / "g.toml"
    path.write_text(Path(_grid_file(tmp_path, "")).read_text().replace("seeds", f"claim_margin = {margin}\nseeds"))
    with pytest.raises(HarnessError, match="'claim_margin' is .*finite positive"):
        load_registry().grid(str(path))


def test_cost_counts_online_epochs_and_cached_tokens(tmp_path):
    reg = load_registry()
    trials = expand(reg.grid(_grid_file(tmp_path, "[overrides.cifar10]\nprotocol = \"online\"\n")), reg)
    digits, cifar = (trial_cost(t, measured_speed={"demo-mae-tiny": 100.0}, measured_images={})
                     for t in trials[:2])
    assert digits.passes == digits.images == 1797 and digits.hours == pytest.approx(1797 / 100 / 3600)
    assert 1797 * 2 * 64 * 4 < digits.cache_bytes < 1797 * 3 * 64 * 4  # [cls] heads: [cls] + patch mean, float32
    attention = expand(reg.grid(_grid_file(tmp_path, '[heads.abmilp]\noptimizer = "lars"\nlr = [0.1]\n')), reg)[0]
    every_token = trial_cost(attention, measured_speed={}, measured_images={})
    # abmilp reads "prenorm" (16 patches + [cls], width 64, float16); "norm", read by cls and mean only, is summarised
    # ([cls] + patch mean, float32)
    assert every_token.cache_by_tap["prenorm"] > 1797 * 17 * 64 * 2 > 1797 * 3 * 64 * 4 > every_token.cache_by_tap["norm"]
    assert cifar.cache_bytes is None and cifar.passes == 60000 + 4 * 45000  # train split again every later epoch
    ijepa = trial_cost(expand(reg.grid("full"), reg)[-1], measured_speed={}, measured_images={})
    assert ijepa.throughput == "registered 1-GPU" and ijepa.hours > 0


def test_without_done_keeps_only_heads_without_results(tmp_path):
    reg = load_registry()
    trials = expand(reg.grid(TINY), reg)
    done = {h.config_hash for h in trials[0].heads} | {trials[1].heads[0].config_hash}
    left = without_done(trials, done)
    assert [t.trial_id for t in left] == [t.trial_id for t in trials[1:]]
    assert left[0].heads == trials[1].heads[1:]


# --------------------------------------------------------------------------------------------------- CLI


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_dry_run_prints_trials_passes_cache_and_gpu_hours(capsys, tmp_path):
    code, out = _run(capsys, "sweep", "--grid", "full", "--dry-run", "--results-dir", str(tmp_path))
    assert code == 0
    heads = load_registry().grid("full").num_heads * 63  # DINOv2's heads and k-NN beside the five aggregators
    assert "63 trials = 63 backbone passes" in out and f"{heads} heads, {heads} without a result yet" in out
    assert "Token cache:" in out and "GiB" in out and "GPU-hours" in out
    flat = " ".join(out.split())
    assert "unknown for dinov2-vit-b14-reg4, dinov3-vit-b16 (no registered" in flat  # not measured yet
    assert "mae-vit-b16 / cifar10 per tap: block8.norm" in flat and "k-NN heads:" in flat  # DINOv2's last 4
    assert "Test predictions:" in out and "MiB added to the results folder" in out


def test_bad_backbone_name_is_a_user_error(capsys, tmp_path):
    code, out = _run(capsys, "sweep", "--grid", "demo", "--backbones", "demo-mae-tiny,dino-vit-b17",
                     "--results-dir", str(tmp_path))
    assert code == 2 and "unknown backbone 'dino-vit-b17'" in out and "dino-vit-b16" in out


def test_sweep_hands_run_options_to_the_trials_without_changing_their_hashes(capsys, tmp_path, monkeypatch):
    import harness.run.sweep

    seen = {}

    def fake_run_sweep(plans, **kwargs):
        seen.update(plans=plans, **kwargs)
        return harness.run.sweep.SweepSummary(trials=len(plans), heads=sum(len(p.heads) for p in plans))

    monkeypatch.setattr(harness.run.sweep, "run_sweep", fake_run_sweep)
    code, out = _run(capsys, "sweep", "--grid", TINY, "--results-dir", str(tmp_path), "--cache-dir", "tok",
                     "--download", "--max-retries", "3", "--no-leaderboard", "--backbones", "demo-mae-tiny")
    assert code == 0 and "1 of 1 trials, 2 of 2 heads to run (no results yet)" in out
    (plan,) = seen["plans"]
    assert plan.cache_dir == str(Path("tok").resolve()) and plan.download and plan.provenance["git_commit"]
    assert plan.heads == expand(load_registry().grid(TINY), load_registry())[0].heads
    assert (seen["max_retries"], seen["cpus_per_trial"], seen["gpus_per_trial"]) == (3, 1.0, 0.0)


def test_submit_refuses_paths_the_job_cannot_see(capsys, tmp_path):
    code, out = _run(capsys, "submit", "--grid", "demo", "--results-dir", "results")
    assert code == 2 and "--results-dir 'results' is relative" in out
    code, out = _run(capsys, "submit", "--grid", "demo", "--cache-dir", "tokens")
    assert code == 2 and "--cache-dir 'tokens' is relative" in out
    grid = tmp_path / "mine.toml"
    shutil.copy(ROOT / TINY, grid)
    code, out = _run(capsys, "submit", "--grid", str(grid))
    assert code == 2 and "outside the project folder" in out


def test_progress_without_a_terminal_prints_one_line_per_change():
    from harness.run.sweep import _StoreAndShow

    reg = load_registry()
    plans = expand(reg.grid(TINY), reg)
    out = io.StringIO()
    show = _StoreAndShow(plans, Path("unused"), Console(file=out, width=200))
    assert show.live is None

    class Trial:
        config = {"index": 1}

    with show:
        show.on_trial_start(0, [], Trial())
        show.on_trial_error(0, [], Trial())
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "demo-dino-tiny/digits: running" in lines[0]
    assert "failed (0/4 trials done, 0 running, 1 failed" in lines[1]
    assert show.__getstate__()["console"] is None  # Tune pickles callbacks; the console stays with the driver


def test_progress_on_a_terminal_is_a_live_table():
    from harness.run.sweep import _StoreAndShow

    reg = load_registry()
    out = io.StringIO()
    show = _StoreAndShow(expand(reg.grid(TINY), reg), Path("unused"), Console(file=out, width=200,
                                                                             force_terminal=True))

    class Trial:
        config = {"index": 0}

    with show:
        show.on_trial_start(0, [], Trial())
        show.on_trial_recover(0, [], Trial())
    assert show.live is not None and show.state[0] == "retrying"
    assert "0/4 trials done, 0 running, 0 failed" in out.getvalue() and "demo-simmim-tiny" in out.getvalue()


def test_progress_shows_each_running_trials_epoch_heads_alive_and_best_val_within_80_columns():
    from harness.run.sweep import _StoreAndShow

    reg = load_registry()
    plans = expand(reg.grid(TINY), reg)
    show = _StoreAndShow(plans, Path("unused"), None)

    class Trial:
        config = {"index": 0}

    show.on_trial_start(0, [], Trial())
    show.on_trial_result(0, [], Trial(), {"progress": "[4, 10, 2, 61.5]"})  # what the trial reports per epoch
    show.on_trial_result(0, [], Trial(), {"progress": "[5, 10, 1, 58.0]"})  # a worse epoch: the best so far stays
    assert show._fraction() == pytest.approx(0.5 / len(plans))
    console = Console(record=True, width=80)
    console.print(show.table())
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80 and "[]" not in text
    assert "5/10" in text and f"1/{len(plans[0].heads)}" in text and "61.50" in text and "pending" in text
    show.first_start -= 10.0  # 10 s into the first trial, an eighth of the sweep's epochs done
    assert "ETA 70 s" in show._title()  # from the trials' pace, smooth between trials
    for plan in plans:
        assert plan.backbone in text.split()  # names whole


# ------------------------------------------------------------------------------------------- on real Ray


class _Weights(http.server.BaseHTTPRequestHandler):
    """/flaky.pth: 503 on the first request, the checkpoint after; /corrupt.pth: bytes that are no checkpoint."""

    checkpoint = b""
    requests: dict[str, int] = {}

    def do_GET(self):
        n = self.requests[self.path] = self.requests.get(self.path, 0) + 1
        if self.path == "/flaky.pth" and n == 1:
            self.send_error(503, "try again")
            return
        body = self.checkpoint if self.path == "/flaky.pth" else b"not a checkpoint" * 64
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _test_registry(folder: Path, port: int) -> Path:
    """The project's registry plus two tiny MAE-layout backbones whose weights come from the test server."""
    import torch

    from harness.models.backbones import build_model

    shutil.copytree(REGISTRY_DIR, folder)
    entries = ""
    for name in ("flaky", "corrupt"):
        entries += (f'["test-mae-{name}"]\nextends = "demo-mae-tiny"\nrandom_init = false\n'
                    f'url = "http://127.0.0.1:{port}/{name}.pth"\nfilename = "{name}.pth"\n\n')
    (folder / "backbones" / "zz_sweep_tests.toml").write_text(entries)
    buffer = io.BytesIO()
    torch.save({"model": build_model(load_registry(folder).backbone("test-mae-flaky")).state_dict()}, buffer)
    _Weights.checkpoint = buffer.getvalue()
    return folder


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """One Ray head (2 CPUs, 2 logical GPUs) whose workers see the test registry, downloads and weights server.

    Drivers run as `python -m harness.cli` subprocesses with the same environment, as a user would start them
    (Ray reads its auth mode when first imported, so an in-process driver would depend on import order)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Weights)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = tmp_path_factory.mktemp("ray")
    env = {**auth_env(), "HARNESS_REGISTRY_DIR": str(_test_registry(base / "registry", server.server_port)),
           "HARNESS_DOWNLOAD_DIR": str(base / "downloads"), "HARNESS_WEIGHTS_DIR": str(base / "weights"),
           "HARNESS_WEIGHTS_LOCK": str(base / "weights.lock.json")}
    node, address, _ = start_head(env, num_cpus=2, num_gpus=2)
    try:
        yield env, address
    finally:
        node.stop()
        server.shutdown()


def _sweep(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "harness.cli", "sweep", "--no-leaderboard", "--no-progress", *args]
    return subprocess.run(argv, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def failing_sweep(ray_head, tmp_path_factory):
    """One sweep of an ok, a flaky-download and a corrupt-weights backbone at 0.5 logical GPU per trial."""
    env, address = ray_head
    results = tmp_path_factory.mktemp("failing")
    grid = results / "half_gpu.toml"
    grid.write_text((ROOT / TINY).read_text().replace("gpus = 0", "gpus = 0.5"))
    run = _sweep(env, "--grid", str(grid), "--backbones", "demo-dino-tiny,test-mae-flaky,test-mae-corrupt",
                 "--address", address, "--results-dir", str(results), "--max-retries", "1")
    return run.returncode, run.stdout + run.stderr, store.read_results(results)


@pytest.mark.slow
def test_trial_failing_once_is_retried_and_succeeds(failing_sweep):
    code, out, rows = failing_sweep
    flaky = rows[rows.backbone == "test-mae-flaky"]
    assert _Weights.requests["/flaky.pth"] == 2  # the first download got a 503, the retry the checkpoint
    assert len(flaky) == 2 and set(flaky.status) == {"ok"} and flaky.test_top1.notna().all()


@pytest.mark.slow
def test_user_error_inside_a_trial_is_not_retried_and_is_one_paragraph(failing_sweep):
    code, out, rows = failing_sweep
    assert code == 2 and _Weights.requests["/corrupt.pth"] == 1  # a HarnessError in a worker: never retried
    assert rows[rows.backbone == "test-mae-corrupt"].empty  # no rows: the next sweep runs it again
    assert "corrupt.pth: not a readable checkpoint" in out and "test-mae-corrupt/digits: no rows written" in out
    paragraph = out[out.index("error: "):]  # (the flaky trial's retried crash is logged by Tune above it, as before)
    assert "Traceback" not in paragraph and "\x1b[" not in paragraph and "RayTaskError" not in paragraph
    summary = " ".join(out.split())  # the console wraps long lines
    assert "2 trials ok, 0 failed, 0 stopped before they finished, 1 stopped by an error in their input" in summary


@pytest.mark.slow
def test_trials_run_on_their_assigned_logical_gpu_without_cuda(failing_sweep):
    code, out, rows = failing_sweep
    ok = rows[rows.status == "ok"]
    assert len(ok) == 4
    for device in ok.device:  # "cpu (1 threads) [ray node 1a2b3c4d, gpus 0]"
        assert device.startswith("cpu (") and device.split("gpus ")[1].rstrip("]") in ("0", "1"), device


@pytest.mark.slow
def test_driver_killed_mid_sweep_resumes_without_duplicates(ray_head, tmp_path, capsys):
    env, address = ray_head
    # one trial at a time (2 CPUs each on the 2-CPU head), so the kill lands between trials: with two running
    # together, warm-cache trials of seconds could all report before the driver is killed
    args = ["--grid", TINY, "--address", address, "--results-dir", str(tmp_path), "--cpus-per-trial", "2"]
    trials = expand(load_registry().grid(TINY), load_registry())
    driver = subprocess.Popen([sys.executable, "-m", "harness.cli", "sweep", "--no-progress", *args], cwd=ROOT,
                              env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows_dir = tmp_path / "rows" / "grid=tiny"
    deadline = time.monotonic() + 240
    while not list(rows_dir.glob("*.parquet")) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    first = {p.name.split("-")[0] for p in rows_dir.glob("*.parquet")}
    assert 1 <= len(first) < len(trials), "the driver must die after some trials and before all"

    rerun = _sweep(env, *args)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{len(trials) - len(first)} of {len(trials)} trials" in rerun.stdout
    files = [p.name.split("-")[0] for p in rows_dir.glob("*.parquet")]
    assert sorted(files) == sorted(t.trial_id for t in trials)  # every trial's rows once: none ran twice
    import pyarrow.parquet as pq

    hashes = [h for p in rows_dir.glob("*.parquet") for h in pq.read_table(p).column("config_hash").to_pylist()]
    assert sorted(hashes) == sorted(h.config_hash for t in trials for h in t.heads)
    assert not list(rows_dir.glob(".*"))  # no temporary file left behind by the killed driver

    code, out = _run(capsys, "sweep", "--grid", TINY, "--results-dir", str(tmp_path))
    assert code == 0 and "Nothing to run: all 8 heads" in out


RESUME = "tests/grids/resume.toml"
EXECUTION = ("wall_s", "started_at", "ended_at", "images_per_s", "device")  # how a run went, not what it computed


def _start_sweep(env: dict[str, str], *args: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "harness.cli", "sweep", "--no-leaderboard", "--no-progress", *args]
    return subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _checkpoint_reached(results: Path, epoch: int, driver: subprocess.Popen, timeout: float = 240) -> dict:
    """Wait for a checkpoint inside `epoch` (past its first step); its position."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and driver.poll() is None:
        for state in (results / "checkpoints").glob("*/*/checkpoint_*/state.json"):
            try:
                position = json.loads(state.read_text())["position"]
            except (OSError, ValueError):  # being written
                continue
            if position["epoch"] == epoch and position["step"] >= 1:
                return position
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint in epoch {epoch}: {driver.communicate()[0] if driver.poll() else 'timeout'}")


def _trial_workers(env: dict[str, str]) -> list[int]:
    """Pids of the Tune trial workers of this module's Ray head (its auth token is in their environment; their title
    is `ray::ImplicitFunc.train` while Tune's `train` call runs, `ray::ImplicitFunc` between two)."""
    token = f"RAY_AUTH_TOKEN={env['RAY_AUTH_TOKEN']}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::ImplicitFunc") and \
                    token in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:  # gone, or another user's
            continue
    return pids


def _computed(results: Path) -> tuple:
    """A results folder's rows (less how the run went), curves and test predictions, in a fixed order."""
    rows = store.read_results(results).drop(columns=list(EXECUTION)).sort_values("config_hash", ignore_index=True)
    curves = store.read_curves(results).sort_values(["config_hash", "epoch"], ignore_index=True)
    correct = store.read_correct(results, rows.config_hash.tolist())
    return rows, curves, {h: v.tolist() for h, v in sorted(correct.items())}


def _assert_same_results(a: Path, b: Path) -> None:
    import pandas as pd

    (rows_a, curves_a, correct_a), (rows_b, curves_b, correct_b) = _computed(a), _computed(b)
    pd.testing.assert_frame_equal(rows_a, rows_b)
    pd.testing.assert_frame_equal(curves_a, curves_b)
    assert correct_a == correct_b and len(correct_a) == (rows_a.status == "ok").sum()


@pytest.fixture(scope="module")
def resume_reference(ray_head, tmp_path_factory) -> Path:
    """The resume grid's trial run through without a failure."""
    env, address = ray_head
    results = tmp_path_factory.mktemp("uninterrupted")
    run = _sweep(env, "--grid", RESUME, "--address", address, "--results-dir", str(results))
    assert run.returncode == 0, run.stdout + run.stderr
    rows = store.read_results(results)
    assert sorted(rows.status) == ["diverged", "ok", "ok"]
    return results


@pytest.mark.slow
def test_a_worker_killed_mid_trial_is_retried_from_its_checkpoint_to_the_uninterrupted_result(
        ray_head, resume_reference, tmp_path):
    env, address = ray_head
    driver = _start_sweep(env, "--grid", RESUME, "--address", address, "--results-dir", str(tmp_path),
                          "--checkpoint-minutes", "0")
    reached = _checkpoint_reached(tmp_path, 1, driver)  # inside the second of four epochs
    workers = _trial_workers(env)
    assert len(workers) == 1, workers
    os.kill(workers[0], signal.SIGKILL)
    out = " ".join(driver.communicate(timeout=300)[0].split())
    assert driver.returncode == 0, out
    continued = re.search(r"continued from its checkpoint \(after a failure\) at epoch (\d+), step (\d+)", out)
    assert continued, out
    assert (1, reached["step"]) <= (int(continued[1]), int(continued[2])) < (4, 0)  # not from the start
    _assert_same_results(resume_reference, tmp_path)
    assert not any((tmp_path / "checkpoints").iterdir())  # deleted with the rows stored


@pytest.mark.slow
def test_a_sweep_killed_mid_trial_continues_it_from_its_checkpoint_when_rerun(ray_head, resume_reference, tmp_path):
    env, address = ray_head
    shared = tmp_path / "shared"  # as a cluster's NFS folder would be
    args = ["--grid", RESUME, "--address", address, "--results-dir", str(tmp_path / "results"),
            "--checkpoint-minutes", "0", "--checkpoint-dir", str(shared / "checkpoints")]
    driver = _start_sweep(env, *args)
    reached = _checkpoint_reached(shared, 1, driver)
    driver.send_signal(signal.SIGKILL)  # its trial's worker goes with it
    driver.communicate()
    assert store.read_results(tmp_path / "results").empty
    rerun = _sweep(env, *args)
    out = " ".join((rerun.stdout + rerun.stderr).split())
    assert rerun.returncode == 0, out
    continued = re.search(r"continued from its checkpoint \(an earlier sweep's\) at epoch (\d+), step (\d+)", out)
    assert continued and (int(continued[1]), int(continued[2])) >= (1, reached["step"]), out
    _assert_same_results(resume_reference, tmp_path / "results")
    assert not any((shared / "checkpoints").iterdir()) and not (tmp_path / "results" / "checkpoints").exists()


class _AgentStartingClient:
    """A job client whose head has no job agent for its first `busy` submissions (Ray's message, verbatim)."""

    def __init__(self, busy: int):
        self.busy, self.calls = busy, 0

    def submit_job(self, **_: object) -> str:
        self.calls += 1
        if self.calls <= self.busy:
            raise RuntimeError("Request failed with status code 503: No available agent to submit job, please try "
                               "again later.")
        return "raysubmit_1"


def test_submit_waits_for_a_starting_job_agent_then_names_the_problem(monkeypatch, tmp_path):
    from harness.run import sweep

    client = _AgentStartingClient(busy=2)  # two 1 s waits
    monkeypatch.setattr(sweep, "_job_client", lambda address: (client, "http://head:8265"))
    assert sweep.submit_job(["--grid", "demo"], address=None, project_dir=tmp_path) == ("raysubmit_1",
                                                                                        "http://head:8265")
    assert client.calls == 3
    monkeypatch.setattr(sweep, "AGENT_WAIT_S", -1.0)
    monkeypatch.setattr(sweep, "_job_client", lambda address: (_AgentStartingClient(busy=1), "http://head:8265"))
    with pytest.raises(HarnessError, match="no job agent ready.*accepted"):
        sweep.submit_job(["--grid", "demo"], address=None, project_dir=tmp_path)


def test_cls_and_mean_trials_cache_summaries_and_attention_trials_every_token(tmp_path):
    """What a cached trial stores of each tap follows the heads reading it, and the dry run's estimate predicts it."""
    import json

    from harness.run.trial import run_trial

    reg = load_registry()
    for body, tokens in (("", {"norm": 2}), ('[heads.ep]\noptimizer = "adamw"\nlr = [0.001]\n', {"norm": 2, "prenorm": 17})):
        grid = _grid_file(tmp_path, body.replace("[heads", "[overrides.digits]\nepochs = 1\n[heads", 1))
        cache = tmp_path / f"cache{len(tokens)}"
        plan = dataclasses.replace(expand(reg.grid(grid), reg)[0], cache_dir=str(cache))
        rows, _, predictions = run_trial(plan)
        assert len(predictions) == len(rows)  # every ok head's test predictions
        assert {r["status"] for r in rows} == {"ok"}
        metas = [json.loads(p.read_text()) for p in cache.rglob("meta.json")]
        # ep reads prenorm: [cls] + 16 patches; cls and mean read norm: [cls] + patch mean, in every split
        assert len(metas) == 3 * len(tokens) and {(m["key"]["tap"], m["shape"][1]) for m in metas} == set(tokens.items())
        written = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
        predicted = trial_cost(plan, measured_speed={}, measured_images={}).cache_bytes
        assert 0.9 * predicted < written <= predicted


def test_poolings_grid_trains_every_efficient_probing_pooling_from_one_pass_per_epoch():
    reg = load_registry()
    grid = reg.grid("poolings")
    trials = expand(grid, reg)
    kinds = {reg.aggregator(a.aggregator).kind for a in grid.heads}
    assert kinds == {"cls", "abmilp", "ep", "simpool", "esimpool", "clip", "siglip", "aim", "cbam", "coca", "cait",
                     "dinovit", "jepa", "dolg", "cae"}
    for t in trials:
        assert (t.dataset, t.protocol, t.epochs, t.batch_size, t.warmup_epochs) == ("imagenet-1k", "online", 90,
                                                                                    4096, 10)
        assert all(h.optimizer == "lars" and h.wd == 0 for h in t.heads) and 0.1 in {h.lr for h in t.heads}
        assert len(t.heads) == 15 * 5


def test_dry_run_compares_the_shared_pass_with_one_run_per_pooling(capsys):
    code, out = _run(capsys, "sweep", "--grid", "poolings", "--dry-run")
    assert code == 0
    assert "One run per aggregator instead (15 aggregators" in " ".join(out.split()) and "15.0x this sweep's" in out


@pytest.mark.parametrize("aggregator,options,backbone,fragment", [
    ("esimpool", "", "ijepa-vit-h14-in1k", "width 1280 is not divisible by 12"),
    ("clip", "", "ijepa-vit-h14-in1k", "this backbone gives 256"),
    ("clip", "\noptions = { feat_size = 16 }", "mae-vit-b16", "this backbone gives 196"),
])
def test_a_pooling_that_cannot_read_a_backbone_is_refused_at_plan_time(tmp_path, capsys, aggregator, options,
                                                                       backbone, fragment):
    path = tmp_path / "g.toml"
    path.write_text(f'backbones = ["{backbone}"]\ndatasets = ["imagenet-1k"]\nseeds = [0]\nepochs = 1\nbatch_size = 8\n'
                    f'[heads.{aggregator}]\noptimizer = "lars"\nlr = [0.1]{options}\n')
    code, out = _run(capsys, "sweep", "--grid", str(path), "--dry-run")
    assert code == 2 and fragment in " ".join(out.split()) and "Traceback" not in out
    assert "accepted:" in out
