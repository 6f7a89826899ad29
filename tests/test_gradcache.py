"""GradCache (`mrl.gradcache.gradcache_step`) against plain backpropagation on the tiny BERT.

With dropout on (train mode), the only meaningful plain reference encodes the same chunks in
the same order WITH a graph after the same seed (dropout masks depend on the chunking), then
concatenates them and backpropagates the same loss. Its chunks are tokenised here separately,
one `tokenize` call per chunk, so they do not share gradcache's chunking/trimming code. In eval
mode the reference is one forward over the whole, untrimmed batch.

Tolerance (fp32): against the chunked reference, parameter gradients agree to 1e-6 relative to
each tensor's largest entry (GradCache sums the per-chunk backward passes in another order than
one backward; measured worst ~4e-7). Against one untrimmed forward (eval mode), 1e-5 relative to
the model's largest gradient entry (measured worst ~1.6e-6; see the test).
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from mrl.gradcache import gradcache_step
from mrl.losses import (
    cosent_loss,
    fixed_pairs_loss,
    gte_loss,
    layer_dropping_loss,
    matryoshka_loss,
    mnrl_loss,
)
from mrl.model import Encoder

DIMS = (8, 16, 32)
B = 6  # rows per column
CHUNK = 5  # chunks cut across column boundaries on purpose
REL = 1e-6

WORDS = "the a cat dog sat on mat man woman is playing guitar runs in park".split()


def texts(n_columns: int, seed: int) -> list[str]:
    """C * B texts of varied lengths, column-major (column 0's B rows, then column 1's...)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_columns * B):
        length = int(torch.randint(1, 12, (1,), generator=g))
        out.append(" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (length,), generator=g)))
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return Encoder(tiny_model_dir)


def make_case(name: str, encoder: Encoder):
    """(texts, all_layers, loss_fn(emb) -> (loss, terms)) for one loss setting.

    loss_fn builds a fresh seeded generator on each call so both paths draw the same dims/layers.
    """
    if name == "cosent":
        labels = torch.rand(B, generator=torch.Generator().manual_seed(3))
        base, n_columns, all_layers = cosent_loss, 2, False
    elif name == "mnrl_hard_negative":
        labels, base, n_columns, all_layers = None, mnrl_loss, 3, False
    elif name == "mnrl_symmetric":
        labels, base, n_columns, all_layers = None, partial(mnrl_loss, symmetric=True), 2, False
    elif name in ("2d_layer_dropping", "2d_fixed_pairs"):
        labels, base, n_columns, all_layers = None, mnrl_loss, 3, True
    elif name == "2d_upstream_gte":  # issue 25: the embedding output as a candidate, GTE + hardness
        labels, n_columns, all_layers = None, 3, "embedding"
        base = partial(gte_loss, hardness="all", hardness_strength=2.0)
    else:
        raise ValueError(name)

    def loss_fn(emb):
        columns = emb.unflatten(-2, (n_columns, -1))  # (C, B, D) or (L, C, B, D)
        g = torch.Generator().manual_seed(7)
        if name == "2d_layer_dropping":
            return layer_dropping_loss(base, columns, labels, DIMS, n_dims_per_step=2, generator=g)
        if name == "2d_upstream_gte":
            return layer_dropping_loss(base, columns, labels, DIMS, n_layers_per_step=2, generator=g,
                                       depth_weighting="log", embedding_layer=True)  # fmt: skip
        if name == "2d_fixed_pairs":
            return fixed_pairs_loss(base, columns, labels, [(1, 8), (2, 16)], dims=DIMS)
        return matryoshka_loss(base, columns, labels, DIMS)

    return texts(n_columns, seed=len(name)), all_layers, loss_fn


def forward_args(all_layers: bool | str) -> dict[str, bool]:
    """Encoder.forward's layer arguments: "embedding" is every block plus the embedding output."""
    return {"all_layers": bool(all_layers), "embedding_layer": all_layers == "embedding"}


def grads_and_reset(model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    out = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out


def assert_grads_close(got: dict, want: dict, rel: float = REL, per_tensor: bool = True) -> None:
    """|got - want| <= rel * (largest |want| of the tensor, or of the whole model)."""
    assert got.keys() == want.keys()
    assert sum(g is not None for g in want.values()) > 10
    model_scale = max(g.abs().max().item() for g in want.values() if g is not None)
    for name in want:
        if want[name] is None:
            assert got[name] is None, name
            continue
        scale = want[name].abs().max().item() if per_tensor else model_scale
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=rel * scale + 1e-12, msg=name)


def run_gradcache(encoder, all_texts, all_layers, loss_fn, chunk_size, seed=0):
    features = encoder.tokenize(all_texts)  # padded to the longest of the whole batch
    torch.manual_seed(seed)
    loss, terms = gradcache_step(
        lambda f: encoder(f, **forward_args(all_layers)), features, chunk_size, loss_fn
    )
    return loss, terms, torch.get_rng_state(), grads_and_reset(encoder)


def run_plain_chunked(encoder, all_texts, all_layers, loss_fn, chunk_size, seed=0):
    """Same seed, same chunks encoded in order with a graph, one loss, one backward."""
    torch.manual_seed(seed)
    embs = []
    for start in range(0, len(all_texts), chunk_size):
        chunk = encoder.tokenize(all_texts[start : start + chunk_size])  # padded to the chunk's longest
        embs.append(encoder(chunk, **forward_args(all_layers)))
    rng_after_encoding = torch.get_rng_state()
    loss, terms = loss_fn(torch.cat(embs, dim=-2))
    loss.backward()
    return loss.detach(), terms, rng_after_encoding, grads_and_reset(encoder)


CASES = [
    "cosent",
    "mnrl_hard_negative",
    "mnrl_symmetric",
    "2d_layer_dropping",
    "2d_fixed_pairs",
    "2d_upstream_gte",
]


@pytest.mark.parametrize("case", CASES)
def test_train_mode_matches_plain_chunked_backprop(encoder, case):
    encoder.train()  # dropout on: the replayed RNG must give the same masks
    all_texts, all_layers, loss_fn = make_case(case, encoder)
    loss, terms, rng, grads = run_gradcache(encoder, all_texts, all_layers, loss_fn, CHUNK)
    want_loss, want_terms, want_rng, want_grads = run_plain_chunked(
        encoder, all_texts, all_layers, loss_fn, CHUNK
    )
    assert loss.item() == pytest.approx(want_loss.item(), rel=REL)
    assert terms.keys() == want_terms.keys()
    for k in terms:
        assert not terms[k].requires_grad
        assert terms[k].item() == pytest.approx(want_terms[k].item(), rel=REL)
    assert torch.equal(rng, want_rng)  # left where step 1 (the no-grad encoding) left it
    assert_grads_close(grads, want_grads)
    # Dropout is really on: another seed changes the gradient.
    _, _, _, other = run_gradcache(encoder, all_texts, all_layers, loss_fn, CHUNK, seed=1)
    name = "model.embeddings.word_embeddings.weight"
    assert not torch.allclose(other[name], grads[name], rtol=0, atol=1e-4 * grads[name].abs().max().item())


@pytest.mark.parametrize("case", ["mnrl_hard_negative", "2d_layer_dropping", "2d_upstream_gte"])
def test_eval_mode_matches_one_forward(encoder, case):
    encoder.eval()
    all_texts, all_layers, loss_fn = make_case(case, encoder)
    loss, _, _, grads = run_gradcache(encoder, all_texts, all_layers, loss_fn, chunk_size=4)
    features = encoder.tokenize(all_texts)
    want_loss, _ = loss_fn(encoder(features, **forward_args(all_layers)))  # one untrimmed forward
    want_loss.backward()
    want_grads = grads_and_reset(encoder)
    encoder.train()
    assert loss.item() == pytest.approx(want_loss.item(), rel=REL)
    # Chunks are trimmed to their own longest row, which changes the rounding (not the math) of
    # every sum. The attention key biases have an exactly zero true gradient (softmax ignores a
    # shift), so their entries are pure rounding noise: compare against the model's largest entry.
    assert_grads_close(grads, want_grads, rel=1e-5, per_tensor=False)


def test_chunk_size_at_least_batch_is_one_chunk(encoder):
    encoder.train()
    all_texts, all_layers, loss_fn = make_case("mnrl_hard_negative", encoder)
    n = len(all_texts)
    one = run_gradcache(encoder, all_texts, all_layers, loss_fn, chunk_size=n)
    big = run_gradcache(encoder, all_texts, all_layers, loss_fn, chunk_size=10 * n)
    assert torch.equal(one[0], big[0])
    assert torch.equal(one[2], big[2])
    assert_grads_close(big[3], one[3], rel=0.0)


def test_backward_hook_and_no_sync_are_used(encoder):
    """The caller's backward (e.g. a scaler) sees the loss once; no_sync wraps all chunks but the last."""
    encoder.train()
    all_texts, all_layers, loss_fn = make_case("mnrl_symmetric", encoder)
    seen, entered = [], []

    class NoSync:
        def __enter__(self):
            entered.append(True)

        def __exit__(self, *exc):
            return False

    features = encoder.tokenize(all_texts)
    torch.manual_seed(0)
    loss, _ = gradcache_step(
        lambda f: encoder(f),
        features,
        CHUNK,
        loss_fn,
        backward=lambda l: (seen.append(l.detach()), (l / 4).backward()),
        no_sync=NoSync,
    )
    scaled = grads_and_reset(encoder)
    n_chunks = -(-len(all_texts) // CHUNK)
    assert len(seen) == 1 and torch.equal(seen[0], loss)
    assert len(entered) == n_chunks - 1
    _, _, _, plain = run_gradcache(encoder, all_texts, all_layers, loss_fn, CHUNK)
    assert_grads_close(scaled, {k: None if v is None else v / 4 for k, v in plain.items()})


def test_chunks_are_trimmed_to_their_longest_row(encoder):
    """Every chunk the encoder sees equals that chunk tokenised on its own."""
    all_texts = texts(2, seed=11)
    features = encoder.tokenize(all_texts)
    seen = []

    def encode(f):
        seen.append({k: v.clone() for k, v in f.items()})
        return encoder(f)

    gradcache_step(encode, features, CHUNK, lambda e: (e.square().sum(), {}))
    encoder.zero_grad(set_to_none=True)
    n_chunks = -(-len(all_texts) // CHUNK)
    assert len(seen) == 2 * n_chunks  # no-grad pass, then the replay
    for i, chunk in enumerate(seen[:n_chunks]):
        want = encoder.tokenize(all_texts[i * CHUNK : (i + 1) * CHUNK])
        assert chunk.keys() == want.keys()
        for k in want:
            assert torch.equal(chunk[k], want[k]), k
    assert any(c["input_ids"].shape[1] < features["input_ids"].shape[1] for c in seen)


def test_rejects_bad_chunk_size(encoder):
    with pytest.raises(ValueError, match="chunk_size"):
        gradcache_step(encoder, encoder.tokenize(["a cat"]), 0, lambda e: (e.sum(), {}))


# --- token budget (--mini-batch-tokens) ------------------------------------------------------


def recorded_chunks(encoder, all_texts, all_layers, loss_fn, tokens, chunk_size=None, seed=0):
    """GradCache with a token budget; also returns the texts of each chunk, in encoding order."""
    features = encoder.tokenize(all_texts)
    row_of = {tuple(ids.tolist()): i for i, ids in enumerate(features["input_ids"])}
    assert len(row_of) == len(all_texts)  # distinct texts: a chunk row maps back to one text
    seen = []

    width = features["input_ids"].shape[1]

    def encode(f):
        trimmed = width - f["input_ids"].shape[1]  # chunks are cut to their longest row; pad back
        seen.append([row_of[tuple(ids.tolist()) + (0,) * trimmed] for ids in f["input_ids"]])
        return encoder(f, **forward_args(all_layers))

    torch.manual_seed(seed)
    loss, terms = gradcache_step(encode, features, chunk_size, loss_fn, chunk_tokens=tokens)
    n_chunks = len(seen) // 2
    assert seen[:n_chunks] == seen[n_chunks:]  # the replay re-encodes the same chunks
    return loss, grads_and_reset(encoder), seen[:n_chunks]


def plain_backprop_of_chunks(encoder, all_texts, all_layers, loss_fn, chunks, seed=0):
    """The reference: encode the given chunks in order with a graph (each tokenised on its own),
    put the embeddings back in input order, one loss, one backward."""
    torch.manual_seed(seed)
    embs = [encoder(encoder.tokenize([all_texts[i] for i in rows]), all_layers=all_layers) for rows in chunks]
    order = torch.tensor([i for rows in chunks for i in rows])
    emb = torch.cat(embs, dim=-2).index_select(-2, torch.argsort(order))
    loss, _ = loss_fn(emb)
    loss.backward()
    return loss.detach(), grads_and_reset(encoder)


@pytest.mark.parametrize("case", ["cosent", "mnrl_hard_negative", "2d_layer_dropping"])
def test_token_budget_matches_plain_backprop_of_the_same_chunks(encoder, case):
    encoder.train()  # dropout on
    all_texts, all_layers, loss_fn = make_case(case, encoder)
    budget = 24
    loss, grads, chunks = recorded_chunks(encoder, all_texts, all_layers, loss_fn, budget)
    # Every text once; each chunk within the budget unless it is one text; longest texts first.
    assert sorted(i for rows in chunks for i in rows) == list(range(len(all_texts)))
    lengths = [len(ids) for ids in encoder.token_ids(all_texts)]
    assert len(chunks) > 2
    for rows in chunks:
        padded = len(rows) * max(lengths[i] for i in rows)
        assert padded <= budget or len(rows) == 1
    firsts = [lengths[rows[0]] for rows in chunks]
    assert firsts == sorted(firsts, reverse=True)
    want_loss, want_grads = plain_backprop_of_chunks(encoder, all_texts, all_layers, loss_fn, chunks)
    assert loss.item() == pytest.approx(want_loss.item(), rel=REL)
    # 3e-6, not 1e-6: the reordering to input order and back adds one more summation order
    # (measured worst 1.2e-6, a LayerNorm bias of the 2D case).
    assert_grads_close(grads, want_grads, rel=3e-6)


def test_token_budget_eval_mode_matches_one_forward(encoder):
    encoder.eval()
    all_texts, all_layers, loss_fn = make_case("mnrl_symmetric", encoder)
    loss, grads, chunks = recorded_chunks(encoder, all_texts, all_layers, loss_fn, tokens=30, chunk_size=3)
    assert max(len(rows) for rows in chunks) <= 3  # both limits hold
    want_loss, _ = loss_fn(encoder(encoder.tokenize(all_texts)))  # one untrimmed forward
    want_loss.backward()
    want = grads_and_reset(encoder)
    encoder.train()
    assert loss.item() == pytest.approx(want_loss.item(), rel=REL)
    assert_grads_close(grads, want, rel=1e-5, per_tensor=False)


def test_a_text_longer_than_the_budget_is_a_chunk_of_its_own(encoder):
    encoder.eval()
    all_texts = ["the cat sat on the mat and the dog sat in the park with a man"] + texts(1, seed=3)[:5]
    _, _, chunks = recorded_chunks(encoder, all_texts, False, lambda e: (e.square().sum(), {}), tokens=8)
    assert chunks[0] == [0]
    encoder.train()


def test_rejects_missing_or_bad_token_budget(encoder):
    features = encoder.tokenize(["a cat"])
    with pytest.raises(ValueError, match="chunk_tokens"):
        gradcache_step(encoder, features, None, lambda e: (e.sum(), {}), chunk_tokens=0)
    with pytest.raises(ValueError, match="chunk_size, chunk_tokens"):
        gradcache_step(encoder, features, None, lambda e: (e.sum(), {}))
