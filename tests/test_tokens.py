"""Token extraction and the token cache: one pass whatever the taps, none on a hit, crash-safe writes."""

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from harness.tokens.space import ensure_cache_space, predict_cache_bytes
from harness.errors import HarnessError
from harness.tokens.cache import cache_entry_dir, cache_key, cached_tokens, extract_tokens
from token_fakes import ENTRY, FakeBackbone, digits_val

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def digits():
    return digits_val()


@pytest.fixture(scope="module")
def reference(digits):
    """In-memory tokens of the digits val split, both taps: what every cache read must equal."""
    return extract_tokens(FakeBackbone(), digits[1], ["norm", "prenorm"], batch_size=64, device="cpu")[0]


def _entries(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.glob("*/*/*") if not p.name.startswith(".tmp-"))


@pytest.mark.parametrize("taps", [["norm"], ["norm", "prenorm"], ["prenorm", "norm", "norm"]])
def test_one_forward_per_batch_whatever_the_taps(digits, reference, taps):
    backbone = FakeBackbone()
    tokens, passes = extract_tokens(backbone, digits[1], taps, batch_size=64, device="cpu")
    assert passes == len(digits[1]) == 203
    assert backbone.calls == 4  # ceil(203 / 64), independent of how many taps
    assert set(tokens.tokens) == set(taps)
    for tap in taps:
        assert tokens.tokens[tap].shape == (203, 5, 8) and tokens.tokens[tap].dtype == torch.float16
        assert torch.equal(tokens.tokens[tap], reference.tokens[tap])
    assert tokens.labels.dtype == torch.int64 and torch.equal(tokens.labels, torch.as_tensor(digits[1].labels))


def test_cache_hit_passes_nothing(digits, reference, tmp_path):
    dataset_entry, val = digits
    first = FakeBackbone()
    tokens, passes = cached_tokens(first, dataset_entry, "val", val, ["norm", "prenorm"], cache_dir=tmp_path,
                                   batch_size=64, device="cpu")
    assert passes == 203 and first.calls == 4
    second = FakeBackbone()
    again, passes = cached_tokens(second, dataset_entry, "val", val, ["prenorm", "norm"], cache_dir=tmp_path,
                                  batch_size=64, device="cpu")
    assert passes == 0 and second.calls == 0
    for tap in ("norm", "prenorm"):
        assert torch.equal(again.tokens[tap], reference.tokens[tap]) and torch.equal(tokens.tokens[tap],
                                                                                    reference.tokens[tap])
    assert torch.equal(again.labels, reference.labels)
    assert len(_entries(tmp_path)) == 2


def test_only_missing_taps_are_extracted_in_one_pass(digits, reference, tmp_path):
    dataset_entry, val = digits
    cached_tokens(FakeBackbone(), dataset_entry, "val", val, ["norm"], cache_dir=tmp_path, batch_size=64,
                  device="cpu")
    backbone = FakeBackbone()
    tokens, passes = cached_tokens(backbone, dataset_entry, "val", val, ["norm", "prenorm"], cache_dir=tmp_path,
                                   batch_size=64, device="cpu")
    assert passes == 203 and backbone.calls == 4
    assert torch.equal(tokens.tokens["prenorm"], reference.tokens["prenorm"])


def test_key_separates_weights_split_transform_and_split_seed(digits, tmp_path):
    dataset_entry, val = digits
    backbone = FakeBackbone()
    base = cache_entry_dir(tmp_path, cache_key(backbone, dataset_entry, "val", 203, "norm"))
    other_weights = FakeBackbone()
    other_weights.weights_sha256 = "cd" * 32
    variants = [
        cache_key(other_weights, dataset_entry, "val", 203, "norm"),
        cache_key(backbone, dataset_entry, "test", 203, "norm"),
        cache_key(backbone, dataset_entry, "val", 203, "prenorm"),
        cache_key(backbone, replace(dataset_entry, split_seed=1), "val", 203, "norm"),
        cache_key(FakeBackbone(replace(ENTRY, crop_pct=1.0, interpolation="bilinear")), dataset_entry, "val", 203,
                  "norm"),
    ]
    dirs = {cache_entry_dir(tmp_path, k) for k in variants}
    assert base not in dirs and len(dirs) == len(variants)


def test_killed_writer_leaves_no_entry_and_the_rerun_is_complete(digits, reference, tmp_path):
    dataset_entry, val = digits
    saved = [torch.stack([val[i][0] for i in range(len(val))]), torch.as_tensor(val.labels)]
    torch.save(saved, tmp_path / "split.pt")
    cache_dir = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen([sys.executable, str(HERE / "token_fakes.py"), str(cache_dir), "0.05",
                              str(tmp_path / "split.pt")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(cache_dir.glob("*/*/.tmp-*/tokens.npy")):  # the first batch has been written
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline, "the writer never started writing"
        time.sleep(0.02)
    time.sleep(0.2)  # well inside the 26 batches x 50 ms
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert _entries(cache_dir) == [] and list(cache_dir.glob("*/*/.tmp-*"))  # only temporaries remain

    tokens, passes = cached_tokens(FakeBackbone(), dataset_entry, "val", TensorDataset(*saved), ["norm", "prenorm"],
                                   cache_dir=cache_dir, batch_size=64, device="cpu")
    assert passes == 203
    for tap in ("norm", "prenorm"):
        assert torch.equal(tokens.tokens[tap], reference.tokens[tap])
    assert torch.equal(tokens.labels, reference.labels)
    assert len(_entries(cache_dir)) == 2 and not list(cache_dir.glob("*/*/.tmp-*"))  # the dead writer's are gone
    hit, passes = cached_tokens(FakeBackbone(), dataset_entry, "val", val, ["norm"], cache_dir=cache_dir,
                                batch_size=64, device="cpu")
    assert passes == 0 and torch.equal(hit.tokens["norm"], reference.tokens["norm"])


def test_concurrent_writers_of_one_key_both_get_the_complete_entry(digits, reference, tmp_path):
    dataset_entry, val = digits
    results, errors = [], []

    def write():
        try:
            results.append(cached_tokens(FakeBackbone(delay_s=0.02), dataset_entry, "val", val, ["norm"],
                                         cache_dir=tmp_path, batch_size=32, device="cpu"))
        except Exception as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=write) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and [passes for _, passes in results] == [203, 203]  # both wrote the same key
    assert all(torch.equal(r.tokens["norm"], reference.tokens["norm"]) for r, _ in results)
    assert len(_entries(tmp_path)) == 1 and not list(tmp_path.glob("*/*/.tmp-*"))


def test_damaged_entry_is_named_and_rebuilt(digits, reference, tmp_path, caplog):
    dataset_entry, val = digits
    cached_tokens(FakeBackbone(), dataset_entry, "val", val, ["norm"], cache_dir=tmp_path, batch_size=64,
                  device="cpu")
    (entry,) = _entries(tmp_path)
    (entry / "meta.json").unlink()
    tokens, passes = cached_tokens(FakeBackbone(), dataset_entry, "val", val, ["norm"], cache_dir=tmp_path,
                                   batch_size=64, device="cpu")
    assert passes == 203 and torch.equal(tokens.tokens["norm"], reference.tokens["norm"])
    assert f"{entry} is damaged" in caplog.text and _entries(tmp_path) == [entry]


def test_predicted_bytes_bound_what_is_written(digits, tmp_path):
    dataset_entry, val = digits
    cached_tokens(FakeBackbone(), dataset_entry, "val", val, ["norm", "prenorm"], cache_dir=tmp_path,
                  batch_size=64, device="cpu")
    written = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file())
    predicted = predict_cache_bytes(203, 5, 8, ["norm", "prenorm"])
    assert written <= predicted <= written + 2 * 2048
    assert predict_cache_bytes(1_281_167, 197, 768, ["norm"]) - 1_281_167 * 197 * 768 * 2 == 1_281_167 * 8 + 2304


def test_not_enough_disk_names_folder_and_bytes(tmp_path):
    ensure_cache_space(tmp_path / "not" / "yet", 1)
    with pytest.raises(HarnessError, match=rf"{tmp_path / 'x'} needs .*\(10000000000000000000 bytes\).* free"):
        ensure_cache_space(tmp_path / "x", 10**19)


def test_cache_dir_defaults_to_the_setting(digits, monkeypatch, tmp_path):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "from-env"))
    dataset_entry, val = digits
    cached_tokens(FakeBackbone(), dataset_entry, "val", val, ["norm"], cache_dir=None, batch_size=64, device="cpu")
    assert len(_entries(tmp_path / "from-env")) == 1


def test_augmented_split_is_never_cached(tmp_path):
    from harness.data.splits import load_splits

    dataset_entry = digits_val()[0]
    train = load_splits(dataset_entry, ENTRY, augment=True).train
    with pytest.raises(ValueError, match="un-augmented"):
        cached_tokens(FakeBackbone(), dataset_entry, "train", train, ["norm"], cache_dir=tmp_path, batch_size=64,
                      device="cpu")


def test_registered_demo_backbone_through_the_cache(tmp_path):
    import harness
    from harness.data.splits import load_splits

    backbone = harness.load_backbone("demo-mae-tiny")
    dataset_entry = digits_val()[0]
    val = load_splits(dataset_entry, backbone.entry).val
    tokens, passes = cached_tokens(backbone, dataset_entry, "val", val, ["norm", "prenorm"], cache_dir=tmp_path,
                                   batch_size=128, device="cpu")
    assert passes == 203 and tokens.tokens["norm"].shape == (203, 17, 64)  # 4x4 patches + [cls], width 64
    again, passes = cached_tokens(backbone, dataset_entry, "val", val, ["norm"], cache_dir=tmp_path,
                                  batch_size=128, device="cpu")
    assert passes == 0 and torch.equal(again.tokens["norm"], tokens.tokens["norm"])
    assert not torch.equal(tokens.tokens["norm"], tokens.tokens["prenorm"])


def test_summary_entries_hold_prefix_and_patch_mean_and_pool_as_all_tokens_do(digits, reference, tmp_path):
    """A [cls]/mean-only trial caches num_prefix + 1 tokens; both heads' poolings read the same from them."""
    from harness.heads.pool.summary import ClsPool, MeanPool

    dataset_entry, val = digits
    summary, passes = cached_tokens(FakeBackbone(), dataset_entry, "val", val, ["norm", "prenorm"],
                                    cache_dir=tmp_path, batch_size=64, device="cpu", summary_prefix=1)
    assert passes == 203
    for tap in ("norm", "prenorm"):
        full = reference.tokens[tap]
        assert summary.tokens[tap].shape == (203, 2, 8) and summary.tokens[tap].dtype == torch.float32
        assert torch.equal(ClsPool()(summary.tokens[tap]).half(), ClsPool()(full))  # float32: unrounded
        # the mean is taken and stored in float32, so it differs from the mean of float16 tokens by their rounding
        torch.testing.assert_close(MeanPool(1)(summary.tokens[tap]), MeanPool(1)(full.float()),
                                   rtol=2 ** -8, atol=2 ** -7)  # float16 rounding of the tokens behind `full`
    assert torch.equal(summary.labels, reference.labels)
    again, passes = cached_tokens(FakeBackbone(), dataset_entry, "val", val, ["norm"], cache_dir=tmp_path,
                                  batch_size=64, device="cpu", summary_prefix=1)
    assert passes == 0 and torch.equal(again.tokens["norm"], summary.tokens["norm"])
    everything, passes = cached_tokens(FakeBackbone(), dataset_entry, "val", val, ["norm"], cache_dir=tmp_path,
                                       batch_size=64, device="cpu")
    assert passes == 203 and torch.equal(everything.tokens["norm"], reference.tokens["norm"])  # its own entry
    assert len(_entries(tmp_path)) == 3


def test_summary_store_keeps_a_large_mean_channel_that_batchnorm_standardises():
    """A channel at 1000 with a spread of 0.01: float16 (spacing 0.5 there) would flatten it, and BatchNorm would
    then standardise rounding noise; the float32 summary keeps its standardised values to 1e-2."""
    from harness.tokens.cache import store_dtype, summary_tokens

    g = torch.Generator().manual_seed(0)
    x = 1000.0 + 0.01 * torch.randn(256, 5, 8, generator=g, dtype=torch.float64)

    def standardised(tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.double()
        return (t - t.mean(0)) / t.std(0)

    exact = standardised(summary_tokens(x, 1))
    stored = summary_tokens(x.float(), 1).to(store_dtype(1))
    assert stored.dtype == torch.float32 and store_dtype(None) == torch.float16
    assert (standardised(stored) - exact).abs().max() < 1e-2
    flattened = (standardised(stored.half()) - exact).abs()  # what a float16 summary would have trained on
    assert not (flattened < 0.5).all()  # rounded to one value (0/0) or to a few
