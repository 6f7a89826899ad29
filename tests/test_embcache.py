"""The on-disk embedding cache (mrl/embcache.py): hit, miss, invalidation, damaged files; loading
precomputed embeddings (.npy / safetensors) and their bad-input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mrl.embcache import cache_path, cached_embeddings, load_embeddings, model_key, texts_key
from mrl.model import Encoder

TWO_TENSORS = {"a": torch.ones(1, 2), "b": torch.ones(1, 2)}
TEXTS = ["the cat sat on the mat", "a man plays guitar", "a dog runs in the park"]


class CountingEncoder:
    """Wraps an Encoder and counts encode calls (a cache hit makes none)."""

    def __init__(self, encoder):
        self.inner, self.calls = encoder, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, texts, **kwargs):
        self.calls += 1
        return self.inner.encode(texts, **kwargs)


@pytest.fixture
def counting(tiny_model_dir):
    return CountingEncoder(Encoder(tiny_model_dir))


def test_hit_miss_and_values(counting, tmp_path):
    first = cached_embeddings(counting, TEXTS, tmp_path)
    assert counting.calls == 1
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    again = cached_embeddings(counting, TEXTS, tmp_path)
    assert counting.calls == 1  # read back, not encoded
    assert torch.equal(first, again)
    # The stored vectors are the raw (un-normalised) encoder output.
    torch.testing.assert_close(first, counting.inner.encode(TEXTS, normalize=False))
    # Other texts (or the same texts in another order) are another entry.
    cached_embeddings(counting, TEXTS[::-1], tmp_path)
    assert counting.calls == 2
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


def test_changed_model_invalidates(counting, tmp_path):
    cached_embeddings(counting, TEXTS, tmp_path)
    key_before = model_key(counting.inner)
    with torch.no_grad():
        next(counting.inner.model.parameters()).add_(1e-3)  # fine-tuned weights: a new model
    assert model_key(counting.inner) != key_before
    cached_embeddings(counting, TEXTS, tmp_path)
    assert counting.calls == 2
    counting.inner.max_seq_length = 8  # a setting that changes the output also changes the key
    assert model_key(counting.inner) not in (key_before,)
    cached_embeddings(counting, TEXTS, tmp_path)
    assert counting.calls == 3


def test_damaged_file_is_encoded_again(counting, tmp_path):
    first = cached_embeddings(counting, TEXTS, tmp_path)
    path = cache_path(tmp_path, model_key(counting.inner), texts_key(TEXTS))
    path.write_bytes(path.read_bytes()[:40])  # truncated by a crash or a full disk
    messages = []
    again = cached_embeddings(counting, TEXTS, tmp_path, log=messages.append)
    assert counting.calls == 2 and "unreadable" in messages[0]
    torch.testing.assert_close(again, first)


def test_texts_key_is_unambiguous():
    assert texts_key(["ab", "c"]) != texts_key(["a", "bc"])
    assert texts_key(["a"]) != texts_key(["a", ""])
    assert texts_key(["x", "y"]) == texts_key(["x", "y"])


def test_no_cache_dir_encodes(counting):
    cached_embeddings(counting, TEXTS, None)
    cached_embeddings(counting, TEXTS, None)
    assert counting.calls == 2


def test_load_precomputed(tmp_path):
    emb = np.arange(12, dtype=np.float64).reshape(3, 4)
    np.save(tmp_path / "e.npy", emb)
    torch.testing.assert_close(load_embeddings(tmp_path / "e.npy"), torch.tensor(emb, dtype=torch.float32))
    save_file({"vectors": torch.ones(2, 5)}, str(tmp_path / "one.safetensors"))
    assert load_embeddings(tmp_path / "one.safetensors").shape == (2, 5)
    save_file({"a": torch.ones(2, 5), "b": torch.zeros(3, 5)}, str(tmp_path / "two.safetensors"))
    assert load_embeddings(tmp_path / "two.safetensors", key="b").shape == (3, 5)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such file"),
        (lambda p: np.save(p.with_suffix(".npy"), np.zeros(4)), r"\(N, D\) matrix"),
        (lambda p: np.save(p.with_suffix(".npy"), np.array([[1.0, np.nan]])), "row 0 holds a non-finite"),
        (lambda p: p.with_suffix(".npy").write_bytes(b"not numpy"), "cannot read embeddings"),
        (lambda p: p.with_suffix(".txt").write_text("1 2"), r"\.npy or \.safetensors"),
        (lambda p: save_file(TWO_TENSORS, str(p.with_suffix(".safetensors"))), "name one"),
    ],
)
def test_load_errors_name_the_file(tmp_path, make, message):
    base = tmp_path / "emb"
    make(base)
    made = list(tmp_path.iterdir()) or [base.with_suffix(".npy")]
    with pytest.raises(ValueError, match=message) as error:
        load_embeddings(made[0])
    assert str(made[0]) in str(error.value)
    assert "\n" not in str(error.value)
