"""`Encoder.encode` options (layers, dim, normalize, precision) and layer truncation, against
references written out here: masked means of the full model's hidden states, forward hooks that
count block calls, a freshly built k-layer model, and numpy's packbits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModel

from mrl.blocks import find_blocks, truncated_blocks
from mrl.model import Encoder
from mrl.quantize import Ranges, calibrate, dequantize_scalar

TEXTS = [
    "the cat sat on the mat",
    "a dog",
    "the man is playing guitar in the park with a woman",
    "cat",
    "a woman runs in the park",
    "dog sat",
]


@pytest.fixture
def encoder(tiny_model_dir):
    return Encoder(tiny_model_dir).eval()


def mean_pool_by_hand(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, S, D), (N, S) -> (N, D): the average of each row's real tokens, one row at a time."""
    rows = []
    for i in range(hidden.shape[0]):
        keep = mask[i].bool()
        rows.append(hidden[i][keep].sum(0) / keep.sum())
    return torch.stack(rows)


def one_at_a_time(encoder, texts, **kwargs) -> torch.Tensor:
    """encode() of each text alone (no batching, no sorting), stacked in input order."""
    return torch.cat([encoder.encode([t], **{"normalize": False, **kwargs}) for t in texts])


# --------------------------------------------------------------------------------------------
# Defaults: existing callers keep the raw full-width float32 embedding
# --------------------------------------------------------------------------------------------


def test_default_is_raw_full_width_float32(encoder):
    features = encoder.tokenize(TEXTS)
    with torch.no_grad():
        hidden = encoder.model(**features).last_hidden_state
    expected = mean_pool_by_hand(hidden, features["attention_mask"])  # (N, 32), not unit length
    got = encoder.encode(TEXTS, normalize=False)
    assert got.dtype == torch.float32 and got.shape == (len(TEXTS), 32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got.norm(dim=-1), torch.ones(len(TEXTS)))
    assert not got.is_inference()  # usable by autograd, e.g. as distillation targets


# --------------------------------------------------------------------------------------------
# dim and normalize
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 8, 31, 32])
def test_dim_is_slice_then_normalise(encoder, d):
    full = encoder.encode(TEXTS, normalize=False)  # (N, 32) raw
    sliced = full[:, :d]
    expected = sliced / sliced.pow(2).sum(-1, keepdim=True).sqrt()  # unit length at width d
    torch.testing.assert_close(encoder.encode(TEXTS, dim=d, normalize=True), expected)
    torch.testing.assert_close(
        encoder.encode(TEXTS, dim=d, normalize=False), sliced
    )  # normalize=False: raw slice
    if d < 32:  # normalising at full width and then slicing would NOT give unit vectors
        wrong = (full / full.norm(dim=-1, keepdim=True))[:, :d]
        assert not torch.allclose(wrong, expected)


def test_normalize_all_layers_normalises_each_layer_vector(encoder):
    raw = encoder.encode(TEXTS, all_layers=True, normalize=False)  # (3, N, 32)
    unit = encoder.encode(TEXTS, all_layers=True, dim=16, normalize=True)
    assert unit.shape == (3, len(TEXTS), 16)
    torch.testing.assert_close(unit, raw[..., :16] / raw[..., :16].norm(dim=-1, keepdim=True))


# --------------------------------------------------------------------------------------------
# layers: run only the first k blocks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3])
def test_layers_k_pools_hidden_state_k_of_the_full_model(encoder, k):
    features = encoder.tokenize(TEXTS)
    with torch.no_grad():
        hidden_states = encoder.model(**features, output_hidden_states=True).hidden_states
    expected = mean_pool_by_hand(hidden_states[k], features["attention_mask"])  # [0] = embeddings
    torch.testing.assert_close(
        encoder.encode(TEXTS, layers=k, normalize=False), expected, atol=1e-5, rtol=1e-5
    )


def test_blocks_beyond_k_are_not_executed(encoder):
    blocks = encoder.model.encoder.layer
    calls = [0] * len(blocks)

    def counter(i):
        def hook(module, args, output):
            calls[i] += 1

        return hook

    handles = [block.register_forward_hook(counter(i)) for i, block in enumerate(blocks)]
    try:
        encoder.encode(TEXTS, layers=2, batch_size=2, normalize=False)  # 3 batches
        assert calls == [3, 3, 0]
        encoder.encode(TEXTS, batch_size=len(TEXTS), normalize=False)  # restored: all blocks run again
        assert calls == [4, 4, 1]
    finally:
        for handle in handles:
            handle.remove()
    assert encoder.model.encoder.layer is blocks
    assert encoder.model.config.num_hidden_layers == 3


def test_truncation_is_restored_after_an_exception(encoder):
    blocks = encoder.model.encoder.layer
    with pytest.raises(RuntimeError, match="boom"), truncated_blocks(encoder.model, 1):
        assert len(encoder.model.encoder.layer) == 1
        assert encoder.model.config.num_hidden_layers == 1
        raise RuntimeError("boom")
    assert encoder.model.encoder.layer is blocks and len(blocks) == 3
    assert encoder.model.config.num_hidden_layers == 3


def test_layers_with_all_layers_gives_the_first_k_layers(encoder):
    every = encoder.encode(TEXTS, all_layers=True, normalize=False)  # (3, N, 32)
    first_two = encoder.encode(TEXTS, all_layers=True, layers=2, normalize=False)
    assert first_two.shape == (2, len(TEXTS), 32)
    torch.testing.assert_close(first_two, every[:2], atol=1e-5, rtol=1e-5)


def test_find_blocks_bert(encoder):
    parent, attr = find_blocks(encoder.model)
    assert parent is encoder.model.encoder and attr == "layer"


def test_truncated_modernbert_equals_a_k_layer_model_with_the_same_weights():
    # A model with a final norm after its blocks: the k-block output goes through that norm, as
    # in a model built with k layers. layer_types (per-layer attention kind) is sliced with it.
    from transformers import ModernBertConfig, ModernBertModel

    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
    shape = dict(vocab_size=60, hidden_size=32, intermediate_size=64, num_attention_heads=4)
    config = ModernBertConfig(
        num_hidden_layers=4, global_attn_every_n_layers=2, local_attention=8, **shape, **ids
    )
    torch.manual_seed(0)
    model = ModernBertModel(config).eval()
    parent, attr = find_blocks(model)
    assert parent is model and attr == "layers"
    input_ids = torch.randint(5, 60, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 7:] = 0
    with truncated_blocks(model, 3), torch.no_grad():
        got = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    small_config = ModernBertConfig(
        num_hidden_layers=3, global_attn_every_n_layers=2, local_attention=8, **shape, **ids
    )
    small = ModernBertModel(small_config).eval()
    result = small.load_state_dict(model.state_dict(), strict=False)
    assert result.missing_keys == [] and all(k.startswith("layers.3.") for k in result.unexpected_keys)
    with torch.no_grad():
        expected = small(input_ids=input_ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, expected)
    assert len(model.layers) == 4 and model.config.num_hidden_layers == 4
    assert len(model.config.layer_types) == 4


# --------------------------------------------------------------------------------------------
# Input order
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"layers": 1}, {"dim": 8, "normalize": True}, {"precision": "ubinary"}, {"layers": 2, "dim": 12}],
)
def test_results_in_input_order_whatever_the_lengths(encoder, kwargs):
    texts = TEXTS + ["a", "the cat sat on the mat with the dog in the park", "man"]
    expected = one_at_a_time(encoder, texts, **kwargs)
    for batch_size in (1, 2, 4, 64):
        got = encoder.encode(texts, batch_size=batch_size, **{"normalize": False, **kwargs})
        if got.is_floating_point():
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        else:
            assert torch.equal(got, expected)


def test_empty_input(encoder):
    assert encoder.encode([], dim=8, normalize=True).shape == (0, 8)
    assert encoder.encode([], precision="int8", normalize=False).shape == (0, 32)
    assert encoder.encode([], precision="binary", dim=12, normalize=False).shape == (0, 2)


# --------------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [32, 12])
def test_binary_is_packed_sign_bits(encoder, d):
    unit = encoder.encode(TEXTS, dim=d, normalize=True).numpy()
    expected = np.packbits(unit > 0, axis=-1)  # (N, ceil(d / 8)), first dim in the top bit
    ubinary = encoder.encode(TEXTS, dim=d, precision="ubinary", normalize=False)
    binary = encoder.encode(TEXTS, dim=d, precision="binary", normalize=False)
    assert ubinary.dtype == torch.uint8 and ubinary.shape == (len(TEXTS), (d + 7) // 8)
    assert np.array_equal(ubinary.numpy(), expected)
    assert binary.dtype == torch.int8
    assert np.array_equal(binary.numpy().astype(np.int16), expected.astype(np.int16) - 128)


def test_int8_calibrated_on_the_input_when_no_calibration(encoder):
    unit = encoder.encode(TEXTS, dim=16, normalize=True)  # (N, 16)
    codes = encoder.encode(TEXTS, dim=16, normalize=True, precision="uint8")
    low, high = unit.min(0).values, unit.max(0).values
    expected = ((unit - low) / ((high - low) / 255)).round()  # 256 levels spanning each dim
    assert codes.dtype == torch.uint8
    assert torch.equal(codes.long(), expected.long())
    assert codes.min() == 0 and codes.max() == 255
    int8 = encoder.encode(TEXTS, dim=16, normalize=True, precision="int8")
    assert torch.equal(int8.long(), codes.long() - 128)


def test_int8_calibration_sample_goes_through_the_same_slice_and_normalise(encoder):
    sample_texts = ["the man plays", "a cat on a mat", "dog runs in the park", "woman", "guitar"]
    raw_sample = encoder.encode(sample_texts, normalize=False)  # (5, 32) raw, full width
    prefix_sample = encoder.encode(sample_texts, dim=16, normalize=True)
    from_raw = encoder.encode(TEXTS, dim=16, normalize=True, precision="int8", calibration=raw_sample)
    ranges = calibrate(prefix_sample)
    from_ranges = encoder.encode(TEXTS, dim=16, normalize=True, precision="int8", calibration=ranges)
    assert torch.equal(from_raw, from_ranges)
    # Dequantised codes are within half a step of values inside the calibrated range.
    unit = encoder.encode(TEXTS, dim=16, normalize=True)
    inside = (unit >= ranges.low) & (unit <= ranges.high)
    error = (dequantize_scalar(from_ranges, ranges) - unit).abs()
    assert (error[inside] <= ranges.step.expand_as(unit)[inside] / 2 + 1e-6).all()


def test_bad_arguments_raise(encoder):
    with pytest.raises(ValueError, match="dim"):
        encoder.encode(TEXTS, dim=33, normalize=False)
    with pytest.raises(ValueError, match="layers"):
        encoder.encode(TEXTS, layers=4, normalize=False)
    with pytest.raises(ValueError, match="layers"):
        encoder.encode(TEXTS, layers=0, normalize=False)
    with pytest.raises(ValueError, match="precision"):
        encoder.encode(TEXTS, precision="fp16", normalize=False)
    with pytest.raises(ValueError, match="all_layers"):
        encoder.encode(TEXTS, all_layers=True, precision="int8", normalize=False)
    with pytest.raises(ValueError, match="calibration"):
        encoder.encode(TEXTS, precision="binary", calibration=torch.zeros(2, 32), normalize=False)
    with pytest.raises(ValueError, match="width"):
        encoder.encode(
            TEXTS,
            dim=8,
            precision="int8",
            calibration=Ranges(torch.zeros(16), torch.ones(16)),
            normalize=False,
        )


# --------------------------------------------------------------------------------------------
# save_truncated
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2])
def test_save_truncated_is_a_standalone_k_layer_model(encoder, tmp_path, k):
    before = encoder.encode(TEXTS, normalize=False)
    expected = encoder.encode(TEXTS, layers=k, normalize=False)
    path = tmp_path / f"first{k}"
    encoder.save_truncated(path, k)

    model = AutoModel.from_pretrained(path).eval()
    assert model.config.num_hidden_layers == k
    assert len(model.encoder.layer) == k
    config = json.loads((path / "config.json").read_text())
    assert config["num_hidden_layers"] == k
    features = encoder.tokenize(TEXTS)
    with torch.no_grad():
        hidden = model(**features).last_hidden_state
    torch.testing.assert_close(
        mean_pool_by_hand(hidden, features["attention_mask"]), expected, atol=1e-5, rtol=1e-5
    )

    reloaded = Encoder(path)
    assert reloaded.num_layers == k
    torch.testing.assert_close(reloaded.encode(TEXTS, normalize=False), expected, atol=1e-5, rtol=1e-5)
    meta = json.loads((path / "mrl_config.json").read_text())
    assert meta["num_layers"] == k and meta["truncated_from"] == 3
    # The encoder itself is unchanged.
    assert encoder.num_layers == 3 and len(encoder.model.encoder.layer) == 3
    torch.testing.assert_close(encoder.encode(TEXTS, normalize=False), before)


def test_save_truncated_keeps_only_trained_layers_up_to_k(encoder, tmp_path):
    encoder.metadata = {"dims": [32, 16], "layers": [1, 2, 3]}
    encoder.save_truncated(tmp_path / "two", 2)
    meta = json.loads((tmp_path / "two" / "mrl_config.json").read_text())
    assert meta["layers"] == [1, 2] and meta["dims"] == [32, 16]
    assert encoder.metadata == {"dims": [32, 16], "layers": [1, 2, 3]}
    with pytest.raises(ValueError, match="k must be"):
        encoder.save_truncated(tmp_path / "bad", 4)


def test_encode_defaults_to_unit_vectors(encoder):
    """The inference default is normalised; normalize=False gives the raw pooled vector."""
    raw = encoder.encode(TEXTS, normalize=False)
    unit = encoder.encode(TEXTS)
    torch.testing.assert_close(unit, raw / raw.norm(dim=-1, keepdim=True))
