"""Encoder against references written out here: per-row loops, hand-made masked means, finite
differences, and the saved folder read back through plain `transformers` (the pooling functions
alone: tests/test_pooling.py)."""

from __future__ import annotations

import inspect
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer, BertTokenizer

from mrl.blocks import find_final_norm
from mrl.losses import mnrl_loss, prefix
from mrl.model import Encoder
from mrl.pooling import pool

TEXTS = [
    "the cat sat on the mat",
    "a dog",
    "the man is playing guitar in the park",
    "cat",
    "a woman runs",
]


# --------------------------------------------------------------------------------------------
# Encoder on the tiny random BERT
# --------------------------------------------------------------------------------------------


def masked_mean_by_hand(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, S, D), (N, S) -> (N, D): average each row's real tokens, written out per row."""
    rows = []
    for i in range(hidden.shape[0]):
        keep = mask[i].bool()
        rows.append(hidden[i][keep].sum(0) / keep.sum())
    return torch.stack(rows)


@pytest.fixture
def encoder(tiny_model_dir):
    return Encoder(tiny_model_dir).eval()


def test_encoder_properties(encoder):
    assert encoder.dim == 32
    assert encoder.num_layers == 3
    assert encoder.pooling == "mean"


def test_forward_all_layers_pools_each_hidden_state(encoder):
    features = encoder.tokenize(TEXTS)
    with torch.no_grad():
        layers = encoder(features, all_layers=True)  # (L, N, D)
        final = encoder(features)  # (N, D)
        hidden_states = encoder.model(**features, output_hidden_states=True).hidden_states
    assert layers.shape == (3, len(TEXTS), 32)
    assert len(hidden_states) == 4  # embeddings + 3 blocks
    for layer in range(1, 4):
        expected = masked_mean_by_hand(hidden_states[layer], features["attention_mask"])
        torch.testing.assert_close(layers[layer - 1], expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(layers[-1], final)


@pytest.mark.parametrize("layout", ["padded", "buckets", "pack"])
def test_embedding_layer_output_is_pooled_hidden_state_zero(tiny_model_dir, layout):
    """embedding_layer=True (issue 25, upstream's 2D candidates): (L + 1, N, D), row 0 the mean of
    hidden_states[0] (the embedding layer's output, before any block) pooled by hand, rows 1..L
    the blocks exactly as without it, in every layout (padded, length buckets, packed rows)."""
    padding_free = "pack" if layout == "pack" else "off"
    encoder = Encoder(str(tiny_model_dir), padding_free=padding_free).eval()
    encoder.length_buckets = 3 if layout == "buckets" else 1
    features = encoder.tokenize(TEXTS)
    with torch.no_grad():
        every = encoder(features, all_layers=True, embedding_layer=True)  # (L + 1, N, D)
        blocks = encoder(features, all_layers=True)  # (L, N, D)
        hidden_states = encoder.model(**features, output_hidden_states=True).hidden_states
    assert every.shape == (4, len(TEXTS), 32)
    expected = masked_mean_by_hand(hidden_states[0], features["attention_mask"])
    torch.testing.assert_close(every[0], expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(every[1:], blocks, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="all_layers"):
        encoder(features, embedding_layer=True)


def test_padding_in_a_batch_does_not_change_embedding(encoder):
    short, longer = "a dog", "the man is playing guitar in the park with a cat"
    with torch.no_grad():
        alone_features = encoder.tokenize([short])
        batch_features = encoder.tokenize([short, longer])
        assert batch_features["input_ids"].shape[1] > alone_features["input_ids"].shape[1]
        alone = encoder(alone_features)[0]
        in_batch = encoder(batch_features)[0]
        alone_layers = encoder(alone_features, all_layers=True)[:, 0]
        batch_layers = encoder(batch_features, all_layers=True)[:, 0]
    torch.testing.assert_close(in_batch, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch_layers, alone_layers, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_encode_returns_input_order(encoder, batch_size):
    with torch.no_grad():
        alone = torch.stack([encoder(encoder.tokenize([t]))[0] for t in TEXTS])  # (N, D)
        alone_layers = torch.stack(
            [encoder(encoder.tokenize([t]), all_layers=True)[:, 0] for t in TEXTS], dim=1
        )  # (L, N, D)
    got = encoder.encode(TEXTS, batch_size=batch_size, normalize=False)
    assert got.shape == (len(TEXTS), 32)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5)
    got_layers = encoder.encode(TEXTS, batch_size=batch_size, all_layers=True, normalize=False)
    assert got_layers.shape == (3, len(TEXTS), 32)
    torch.testing.assert_close(got_layers, alone_layers, atol=1e-5, rtol=1e-5)


def test_encode_empty(encoder):
    assert encoder.encode([], normalize=False).shape == (0, 32)
    assert encoder.encode([], all_layers=True, normalize=False).shape == (3, 0, 32)


def test_tokenize_respects_max_seq_length(tiny_model_dir):
    encoder = Encoder(tiny_model_dir, max_seq_length=8)
    assert encoder.max_seq_length == 8
    features = encoder.tokenize(["the man is playing guitar in the park", "a"])
    assert features["input_ids"].shape == (2, 8)
    assert features["attention_mask"][0].sum() == 8
    assert features["attention_mask"][1].sum() == 3  # [CLS] a [SEP]
    sep = encoder.tokenizer.sep_token_id
    assert features["input_ids"][0, -1] == sep  # truncation keeps the special tokens
    short = encoder.tokenize(["a", "cat"])
    assert short["input_ids"].shape[1] < 8  # dynamic padding: to the longest, not to the limit


@pytest.fixture
def cased_model_dir(tiny_model_dir, tmp_path):
    """The tiny model with a tokenizer that does not lower-case (upper-case letters become [UNK])."""
    path = tmp_path / "cased"
    shutil.copytree(tiny_model_dir, path)
    BertTokenizer(str(path / "vocab.txt"), do_lower_case=False, model_max_length=64).save_pretrained(path)
    return path


def test_do_lower_case_lowercases_before_tokenizing(cased_model_dir):
    unk = AutoTokenizer.from_pretrained(cased_model_dir).unk_token_id
    cased = Encoder(cased_model_dir, do_lower_case=False)
    lowering = Encoder(cased_model_dir, do_lower_case=True)
    assert unk in cased.tokenize(["Cat SAT"])["input_ids"][0].tolist()  # the tokenizer alone is cased
    got = lowering.tokenize(["Cat SAT"])["input_ids"]
    assert torch.equal(got, cased.tokenize(["cat sat"])["input_ids"])
    assert unk not in got[0].tolist()


def test_trust_remote_code_defaults_to_false():
    assert inspect.signature(Encoder.__init__).parameters["trust_remote_code"].default is False


def test_missing_local_folder_raises_naming_it(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        Encoder(missing)


# --------------------------------------------------------------------------------------------
# Gradient: autograd against a finite-difference directional derivative (float64, no dropout)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "param_name", ["encoder.layer.2.output.dense.weight", "encoder.layer.0.output.dense.weight"]
)
@pytest.mark.parametrize("d", [8, 32])
def test_gradient_matches_finite_difference(tiny_model_dir, param_name, d):
    encoder = Encoder(tiny_model_dir).double().eval()
    anchors = ["the cat sat", "a dog runs", "a woman plays guitar"]
    positives = ["a cat on the mat", "the dog is running", "the man is playing"]
    batch = len(anchors)
    features = encoder.tokenize(anchors + positives)  # column-major: all anchors, then all positives
    param = dict(encoder.model.named_parameters())[param_name]

    def loss() -> torch.Tensor:
        columns = encoder(features).view(2, batch, encoder.dim)  # (C, B, D)
        return mnrl_loss(prefix(columns, d))

    encoder.zero_grad()
    loss().backward()
    torch.manual_seed(0)
    direction = torch.randn_like(param)
    direction /= direction.norm()
    analytic = (param.grad * direction).sum().item()

    # Central difference: truncation error O(eps^2), round-off O(1e-16 / eps) in float64.
    eps = 1e-4
    with torch.no_grad():
        original = param.detach().clone()
        param.copy_(original + eps * direction)
        plus = loss().item()
        param.copy_(original - eps * direction)
        minus = loss().item()
        param.copy_(original)
    numeric = (plus - minus) / (2 * eps)
    assert abs(analytic) > 1e-4  # the check is not vacuous
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-10)


# --------------------------------------------------------------------------------------------
# save / reload
# --------------------------------------------------------------------------------------------


def test_saved_folder_loads_in_plain_transformers(tiny_model_dir, tmp_path):
    encoder = Encoder(tiny_model_dir).eval()
    before = encoder.encode(TEXTS, normalize=False)
    out_dir = tmp_path / "saved"
    encoder.save(out_dir, {"dims": [32, 16]})

    model = AutoModel.from_pretrained(out_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    features = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**features).last_hidden_state
    torch.testing.assert_close(
        masked_mean_by_hand(hidden, features["attention_mask"]), before, atol=1e-5, rtol=1e-5
    )


def test_reload_restores_pooling_length_and_metadata(tiny_model_dir, tmp_path):
    encoder = Encoder(tiny_model_dir, pooling="cls", max_seq_length=20).eval()
    before = encoder.encode(TEXTS, normalize=False)
    out_dir = tmp_path / "saved_cls"
    encoder.save(out_dir, {"dims": [32, 16]})

    reloaded = Encoder(out_dir)
    assert reloaded.pooling == "cls"
    assert reloaded.max_seq_length == 20
    assert reloaded.metadata["dims"] == [32, 16]
    torch.testing.assert_close(reloaded.encode(TEXTS, normalize=False), before, atol=1e-5, rtol=1e-5)
    # cls pooling really is the first token's state of the reloaded plain model
    model = AutoModel.from_pretrained(out_dir).eval()
    features = AutoTokenizer.from_pretrained(out_dir)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        first = model(**features).last_hidden_state[:, 0]
    torch.testing.assert_close(first, before, atol=1e-5, rtol=1e-5)
    # an explicit argument wins over the saved setting
    assert Encoder(out_dir, pooling="max").pooling == "max"


def test_saved_folder_layout(tiny_model_dir, tmp_path):
    out_dir = tmp_path / "saved_layout"
    Encoder(tiny_model_dir, pooling="cls", max_seq_length=20).save(out_dir, {"dims": [32, 16]})

    for name in [
        "config.json",
        "model.safetensors",
        "modules.json",
        "1_Pooling/config.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
    ]:
        assert (out_dir / name).is_file(), name

    modules = json.loads((out_dir / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling"]
    assert [m["idx"] for m in modules] == [0, 1]
    assert modules[0]["type"].endswith("Transformer")
    assert modules[1]["type"].endswith("Pooling")
    assert all({"idx", "name", "path", "type"} <= set(m) for m in modules)

    pooling = json.loads((out_dir / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == 32
    true_flags = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v is True]
    assert true_flags == ["pooling_mode_cls_token"]

    st_config = json.loads((out_dir / "sentence_bert_config.json").read_text())
    assert st_config["max_seq_length"] == 20
    assert st_config["do_lower_case"] is False
    assert isinstance(json.loads((out_dir / "config_sentence_transformers.json").read_text()), dict)


@pytest.mark.parametrize(
    ("mode", "flag"),
    [
        ("mean", "pooling_mode_mean_tokens"),
        ("max", "pooling_mode_max_tokens"),
        ("lasttoken", "pooling_mode_lasttoken"),
    ],
)
def test_saved_pooling_flag_per_mode(tiny_model_dir, tmp_path, mode, flag):
    out_dir = tmp_path / f"saved_{mode}"
    Encoder(tiny_model_dir, pooling=mode).save(out_dir)
    pooling = json.loads((out_dir / "1_Pooling" / "config.json").read_text())
    assert [k for k, v in pooling.items() if k.startswith("pooling_mode") and v is True] == [flag]


def test_pooling_read_from_sentence_transformers_folder(tiny_model_dir, tmp_path):
    """A folder from elsewhere with only 1_Pooling/config.json (no mrl_config.json) picks that pooling."""
    path = tmp_path / "st_style"
    shutil.copytree(tiny_model_dir, path)
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": 32,
                "pooling_mode_cls_token": True,
                "pooling_mode_mean_tokens": False,
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
                "pooling_mode_weightedmean_tokens": False,
                "pooling_mode_lasttoken": False,
                "include_prompt": True,
            }
        )
    )
    assert not (path / "mrl_config.json").exists()
    encoder = Encoder(path).eval()
    assert encoder.pooling == "cls"
    features = encoder.tokenize(TEXTS)
    with torch.no_grad():
        first = encoder.model(**features).last_hidden_state[:, 0]
    torch.testing.assert_close(encoder.encode(TEXTS, normalize=False), first, atol=1e-5, rtol=1e-5)


def test_pad_of_cached_token_ids_equals_tokenize(tiny_model_dir):
    """Tokenising once up front then padding per batch gives exactly tokenize()'s tensors."""
    encoder = Encoder(str(tiny_model_dir), max_seq_length=12, do_lower_case=True)
    texts = ["The Cat sat on the mat in the park with a dog", "a", "play guitar"]
    expected = encoder.tokenize(texts)
    got = encoder.pad(encoder.token_ids(texts))
    assert set(got) == set(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


@pytest.mark.parametrize("buckets", [2, 3, 7])
def test_length_buckets_change_speed_not_results(tiny_model_dir, buckets):
    """Sub-batches of similar length give the same embeddings and gradients as one padded batch."""
    encoder = Encoder(str(tiny_model_dir)).eval()
    texts = ["a", "the cat sat on the mat in the park", "dog", "a man plays the guitar", "is", "runs"]
    features = encoder.tokenize(texts)
    whole = encoder(features, all_layers=True)
    grads_whole = torch.autograd.grad(whole.square().sum(), list(encoder.parameters()), allow_unused=True)
    encoder.length_buckets = buckets
    split = encoder(features, all_layers=True)
    torch.testing.assert_close(split, whole, atol=1e-5, rtol=1e-5)
    grads_split = torch.autograd.grad(split.square().sum(), list(encoder.parameters()), allow_unused=True)
    for a, b in zip(grads_whole, grads_split):
        if a is not None:
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ models with a final norm


def make_tiny_modernbert(path: Path, num_layers: int = 3, hidden_size: int = 32) -> Path:
    """A randomly initialised tiny ModernBERT (final norm after its blocks) with the tiny BERT vocab."""
    from transformers import BertTokenizer, ModernBertConfig, ModernBertModel

    from tests.conftest import TINY_VOCAB

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(dict.fromkeys(TINY_VOCAB)) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(path / "vocab.txt"), model_max_length=64)
    config = ModernBertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=4, intermediate_size=2 * hidden_size, max_position_embeddings=64,
        pad_token_id=0, cls_token_id=2, sep_token_id=3, bos_token_id=2, eos_token_id=3,
        global_attn_every_n_layers=2, local_attention=16,
    )  # fmt: skip
    torch.manual_seed(0)
    model = ModernBertModel(config)
    with torch.no_grad():  # a non-trivial final norm (fresh LayerNorms are the identity map's scale)
        model.final_norm.weight.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_shallow_layers_train_on_the_vector_they_serve_with_a_final_norm(tmp_path):
    """ModernBERT applies a final norm after its blocks. The per-layer embedding used in 2D
    training (forward with all_layers) of block k must equal what a model cut to k blocks
    serves: encode(layers=k) and a save_truncated(k) copy loaded back."""
    folder = make_tiny_modernbert(tmp_path / "modernbert")
    encoder = Encoder(str(folder))
    assert find_final_norm(encoder.model) == "final_norm"
    texts = ["the cat sat on the mat", "a man plays guitar", "the dog runs in the park"]
    trained = encoder.encode(texts, all_layers=True, normalize=False)  # (3, N, D), forward(all_layers)
    for k in (1, 2, 3):
        served = encoder.encode(texts, layers=k, normalize=False)  # (N, D): only k blocks run
        assert torch.allclose(trained[k - 1], served, atol=1e-5), k
    encoder.save_truncated(tmp_path / "cut2", 2)
    assert torch.allclose(
        Encoder(str(tmp_path / "cut2")).encode(texts, normalize=False), trained[1], atol=1e-5
    )
    # ...and without the norm the two differ: the check above has something to catch.
    raw = encoder.model(**encoder.tokenize(texts), output_hidden_states=True).hidden_states[1]
    raw_pooled = pool(raw, encoder.tokenize(texts)["attention_mask"], "mean").detach()
    assert (raw_pooled - trained[0]).abs().max() > 1e-2


def test_bert_like_models_have_no_final_norm(tiny_model_dir):
    """BERT: nothing after the blocks, so block l's vector is hidden_states[l] as before."""
    assert find_final_norm(Encoder(str(tiny_model_dir)).model) is None


def test_the_encoder_does_not_load_the_adaptor_training_code(tiny_model_dir, tmp_path):
    """mrl.model depends on mrl.heads, not on mrl.adaptor (issue #24): importing it, and saving
    and loading a model with a Dense head, leave mrl.adaptor unimported."""
    folder = tmp_path / "m"
    code = f"""
import sys
import torch
from mrl.heads import dense_head
from mrl.model import Encoder
assert "mrl.adaptor" not in sys.modules, "import mrl.model imported mrl.adaptor"
encoder = Encoder({str(tiny_model_dir)!r})
encoder.attach_head(dense_head(torch.eye(32), torch.zeros(32)))
encoder.save({str(folder)!r})
assert Encoder({str(folder)!r}).head is not None
assert "mrl.adaptor" not in sys.modules, "saving or loading a Dense head imported mrl.adaptor"
"""
    repo = Path(__file__).resolve().parents[1]  # `python -c` imports from its working folder
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
