"""Extraction fast paths: bf16 and loader workers only where they pay, precision in the cache key, the one-batch-late
copy-out keeps every token and still refuses tokens float16 cannot hold."""

import pytest
import torch

from harness.errors import HarnessError
from harness.tokens.cache import cache_entry_dir, cache_key, cached_tokens, extract_tokens, extraction_precision, \
    loader_workers
from token_fakes import FakeBackbone, digits_val


@pytest.fixture(scope="module")
def digits():
    return digits_val()


class Overflowing(FakeBackbone):
    """Tokens of the third batch exceed float16's range."""

    def forward_taps(self, images, taps):
        out = super().forward_taps(images, taps)
        return {tap: x * 1e6 if self.calls == 3 else x for tap, x in out.items()}


def test_bf16_and_workers_on_cuda_only():
    assert extraction_precision(torch.device("cpu")) == "float32"
    assert extraction_precision(torch.device("cuda")) == "bfloat16"
    assert loader_workers(torch.device("cpu")) == 0
    assert loader_workers(torch.device("cuda")) == max(torch.get_num_threads() - 1, 0)


def test_channels_last_and_batch_size_give_the_same_tokens(digits):
    reference = extract_tokens(FakeBackbone(), digits[1], ["norm", "prenorm"], batch_size=64, device="cpu")[0]
    other = extract_tokens(FakeBackbone(), digits[1], ["norm", "prenorm"], batch_size=50, device="cpu",
                           channels_last=True)[0]
    for tap in ("norm", "prenorm"):
        assert torch.equal(other.tokens[tap], reference.tokens[tap])
    assert torch.equal(other.labels, reference.labels)


def test_tokens_out_of_float16_range_are_refused_with_the_tap_and_size(digits):
    backbone = Overflowing()
    with pytest.raises(HarnessError, match=r"tap 'prenorm' of backbone 'fake-vit'.*not finite in float16 "
                                           r"\(max \|x\| = \d.*e\+0\d\).*accepted"):
        extract_tokens(backbone, digits[1], ["prenorm"], batch_size=50, device="cpu")
    assert backbone.calls in (3, 4)  # caught one batch late at most, not at the end of the split


def test_cache_key_carries_the_precision(digits, tmp_path):
    dataset_entry, val = digits
    keys = [cache_key(FakeBackbone(), dataset_entry, "val", 203, "norm", p) for p in ("float32", "bfloat16")]
    assert cache_entry_dir(tmp_path, keys[0]) != cache_entry_dir(tmp_path, keys[1])
    cached_tokens(FakeBackbone(), dataset_entry, "val", val, ["norm"], cache_dir=tmp_path, batch_size=64,
                  device="cpu")
    assert cache_entry_dir(tmp_path, keys[0]).is_dir() and not cache_entry_dir(tmp_path, keys[1]).exists()
