"""Padding-free batches (`mrl.packing`, ``Encoder(padding_free=...)``) against the padded forward.

References: the plain padded forward of the same batch (embeddings and parameter gradients), a
brute-force search over every way to cut the sorted batch (bucket plans), and the token lists of
the texts themselves (packed layout). Tolerances are fp32 rounding: the packed and bucketed
passes multiply matrices of other shapes, so sums are added in another order.
"""

from __future__ import annotations

import itertools
import types

import pytest
import torch

from mrl.model import Encoder
from mrl.packing import pack, packing_support, plan_buckets, plan_rows, token_cost
from tests.conftest import TINY_VOCAB

TEXTS = [
    "the cat sat on the mat",
    "a man plays guitar in the park and the woman runs in the park",
    "dog",
    "the dog runs in the park",
    "a",
    "cat sat",
    "the woman is playing",
    "a man is playing guitar",
]


def make_tiny(path, kind: str, dropout: float = 0.1):
    """A tiny random encoder folder: 'bert' (also used with eager attention), 'mpnet' or 'distilbert'."""
    from transformers import (
        BertConfig,
        BertModel,
        BertTokenizer,
        DistilBertConfig,
        DistilBertModel,
        MPNetConfig,
        MPNetModel,
    )

    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(dict.fromkeys(TINY_VOCAB)) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(path / "vocab.txt"), model_max_length=64)
    common = dict(vocab_size=len(tokenizer), pad_token_id=0)
    if kind == "mpnet":
        config = MPNetConfig(
            **common, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=80, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
        )  # fmt: skip
        model = MPNetModel(config)
    elif kind == "distilbert":
        config = DistilBertConfig(
            **common, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64,
            dropout=dropout, attention_dropout=dropout,
        )  # fmt: skip
        model = DistilBertModel(config)
    else:
        config = BertConfig(
            **common, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
        )  # fmt: skip
        model = BertModel(config)
    torch.manual_seed(0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("packing")
    return {kind: make_tiny(root / kind, kind) for kind in ("bert", "mpnet", "distilbert")}


# (folder, attention implementation or None for the model's default)
MODELS = {"bert-sdpa": ("bert", "sdpa"), "bert-eager": ("bert", "eager"), "mpnet": ("mpnet", None)}


def encoders(folders, name: str, mode: str) -> tuple[Encoder, Encoder]:
    folder, attention = MODELS[name]
    kwargs = {"model_kwargs": {"attn_implementation": attention}} if attention else {}
    padded = Encoder(folders[folder], **kwargs)
    fast = Encoder(folders[folder], padding_free=mode, **kwargs)
    fast.model.load_state_dict(padded.model.state_dict())
    return padded, fast


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("mode", ["pack", "buckets"])
@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_embeddings_equal_padded_forward(folders, name, mode, pooling):
    padded, fast = encoders(folders, name, mode)
    padded.eval(), fast.eval()
    padded.pooling = fast.pooling = pooling
    features = padded.tokenize(TEXTS * 2)
    with torch.no_grad():
        for all_layers in (False, True):
            want = padded(features, all_layers=all_layers)
            got = fast(features, all_layers=all_layers)
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=0, atol=2e-6 * want.abs().max().item())


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("mode", ["pack", "buckets"])
def test_gradients_equal_padded_backward(folders, name, mode):
    """Train mode without dropout: the same loss backpropagated through both layouts.

    The loss is a fixed random linear plus a quadratic function of the embeddings: the tiny random
    BERT's embeddings are almost parallel, where a cosine loss has an almost zero gradient (float64:
    ~1e-15) and would compare rounding noise."""
    padded, fast = encoders(folders, name, mode)
    for encoder in (padded, fast):
        encoder.train()
        for module in encoder.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    features = padded.tokenize(TEXTS * 2)
    weights = torch.randn(len(TEXTS) * 2, padded.dim, generator=torch.Generator().manual_seed(0))
    grads = []
    for encoder in (padded, fast):
        emb = encoder(features, all_layers=True)  # (L, N, D): every layer's pooling is backpropagated
        loss = (emb * weights).sum() + emb.square().sum()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None})
    want, got = grads
    assert got.keys() == want.keys() and len(want) > 10
    scale = max(g.abs().max().item() for g in want.values())
    assert scale > 1e-2  # a real gradient, not rounding noise
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-5 * scale, msg=key)


def test_packed_layout_holds_each_text_contiguously(folders):
    """Each text's ids appear once, in order, with positions 0..len-1; attention stays inside it."""
    encoder = Encoder(folders["bert"])
    features = encoder.tokenize(TEXTS)
    lengths = features["attention_mask"].sum(-1).tolist()
    rows = plan_rows(lengths, hidden=384)
    packed, index = pack(features, lengths, rows, encoder.model)
    ids, positions, allowed = packed["input_ids"], packed["position_ids"], packed["attention_mask"]
    width = ids.shape[1]
    assert sorted(i for row in rows for i in row) == list(range(len(TEXTS)))
    for r, row in enumerate(rows):
        offset = 0
        for i in row:
            want = encoder.token_ids([TEXTS[i]])[0]
            span = slice(offset, offset + len(want))
            assert ids[r, span].tolist() == want
            assert positions[r, span].tolist() == list(range(len(want)))
            inside = torch.zeros(width, dtype=torch.bool)
            inside[span] = True
            for q in range(span.start, span.stop):  # a token attends to exactly its own text
                assert torch.equal(allowed[r, 0, q], inside)
            assert index[i, : len(want)].tolist() == [r * width + p for p in range(span.start, span.stop)]
            offset += len(want)


def test_mpnet_positions_start_after_padding_index(folders):
    encoder = Encoder(folders["mpnet"])
    features = encoder.tokenize(TEXTS[:3])
    lengths = features["attention_mask"].sum(-1).tolist()
    packed, _ = pack(features, lengths, [[0, 1, 2]], encoder.model)
    pad = encoder.model.embeddings.padding_idx  # 1 in MPNet, whatever the config says
    want = [pad + 1 + p for n in lengths for p in range(n)]
    assert packed["position_ids"][0].tolist() == want
    assert packed["attention_mask"].dtype == torch.float32  # MPNet adds its mask to the scores


def brute_force_buckets(lengths, hidden, overhead):
    """Cheapest cost over every way to cut the length-sorted texts into contiguous buckets."""
    ordered = sorted(lengths, reverse=True)
    n, best = len(ordered), float("inf")
    for cuts in itertools.product([False, True], repeat=n - 1):
        bounds = [0] + [i + 1 for i, cut in enumerate(cuts) if cut] + [n]
        cost = sum(
            (b - a) * ordered[a] * (1 + ordered[a] / (6 * hidden)) + overhead
            for a, b in zip(bounds, bounds[1:])
        )
        best = min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_bucket_plan_is_the_cheapest_cut(seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 60, (9,), generator=g).tolist()
    if seed % 2:
        lengths[:3] = [lengths[0]] * 3  # ties
    hidden, overhead = 384, [0.0, 32.0, 500.0][seed % 3]
    buckets = plan_buckets(lengths, hidden, overhead)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    cost = sum(
        len(b) * max(lengths[i] for i in b) * (1 + max(lengths[i] for i in b) / (6 * hidden)) for b in buckets
    )
    cost += overhead * len(buckets)
    assert cost == pytest.approx(brute_force_buckets(lengths, hidden, overhead))
    if overhead == 0:  # free calls: every distinct length is its own bucket
        assert len(buckets) == len(set(lengths))


@pytest.mark.parametrize("seed", range(4))
def test_row_plan_partitions_and_beats_the_extremes(seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 70, (40,), generator=g).tolist()
    rows = plan_rows(lengths, hidden=384)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    width = max(sum(lengths[i] for i in row) for row in rows)
    cost = token_cost(len(rows), width, 384)
    assert cost <= token_cost(len(lengths), max(lengths), 384) + 1e-9  # one text per row (= padded)
    assert cost <= token_cost(1, sum(lengths), 384) + 1e-9  # everything in one row
    assert len(rows) * width < len(lengths) * max(lengths)  # fewer tokens than padding


def test_auto_falls_back_to_buckets_and_pack_says_why(folders):
    assert packing_support(Encoder(folders["bert"]).model) is None
    distil = Encoder(folders["distilbert"], padding_free="auto")
    assert distil.padding_free == "buckets"
    assert "distilbert" in packing_support(distil.model)
    with pytest.raises(ValueError, match="distilbert"):
        Encoder(folders["distilbert"], padding_free="pack")
    with pytest.raises(ValueError, match="padding_free"):
        Encoder(folders["bert"], padding_free="sometimes")
    flash = types.SimpleNamespace(
        config=types.SimpleNamespace(model_type="bert", _attn_implementation="flash_attention_2")
    )
    assert "flash_attention_2" in packing_support(flash)
    # Buckets work for any model: DistilBERT matches its padded forward.
    padded = Encoder(folders["distilbert"])
    padded.eval(), distil.eval()
    features = padded.tokenize(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(distil(features), padded(features), rtol=0, atol=1e-5)


def test_computed_tokens_count_only_the_packed_layout(folders):
    encoder = Encoder(folders["bert"], padding_free="pack")
    features = encoder.tokenize(TEXTS * 4)
    real = int(features["attention_mask"].sum())
    encoder(features)
    computed = encoder.computed_tokens
    assert real <= computed < features["attention_mask"].numel()
    with torch.no_grad():  # evaluation passes are not counted
        encoder(features)
    assert encoder.computed_tokens == computed
