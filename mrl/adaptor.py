"""Matryoshka-Adaptor: make a frozen embedding model truncatable after the fact.

Yoon et al. (EMNLP 2024) learn a small function on top of **frozen** embeddings so that their
prefixes become good embeddings: ``f(e) = x + g(x)`` with ``x = norm(e)`` and ``g`` linear or a
small MLP, zero at initialisation (so ``f`` starts as the identity on unit vectors, and every
prefix cosine starts as that of the raw model). It needs no encoder pass: it trains on embeddings
computed once (`mrl.embcache`) or supplied by anyone (a closed API's vectors).

Why the input is normalised first: a cosine is blind to scale, so the unit vector carries all of
the embedding; normalising makes the recipe (losses, learning rate) the same for raw pooled vectors
and for an API's unit vectors, and ``prefix(norm(e), d) == prefix(e, d)`` keeps "identity at
init" exact for every truncated cosine.

Losses (pure functions, like `mrl.losses`; each returns ``(total, {name: term})`` and is a
weighted **sum** over the Matryoshka dims):
- `similarity_loss`: the adapted d-prefix cosine matrix reproduces the original full-width one
  (every pair of the batch), mean absolute difference (the paper's pairwise loss);
- `neighbourhood_loss`: the same, only on each row's top-k neighbours by the original cosine
  (the paper's top-k loss: retrieval lives in the head of the similarity distribution);
- `listwise_loss` (ours, not in the paper): KL between each row's softmax over the batch at full
  width and at the d-prefix, a soft top-k at a retrieval temperature;
- `reconstruction_loss`: ``mean ||f(e) - x||^2``, a pull towards the identity;
- with query-document pairs, the in-batch-negatives ranking loss (`mrl.losses.mnrl_loss`) at each
  prefix, through `mrl.losses.matryoshka_loss` (`adaptor_loss` wires all four together).

Export: a linear adaptor is one dense layer ``y = W' x + b`` with ``W' = I + W``, after a
normalisation: the sentence-transformers layout (``Normalize`` then ``Dense`` modules, built and
saved by `mrl.heads`) and our `mrl.model.Encoder` both load it. PCA on the same corpus
(`pca_dense`, closed form) is a dense layer of the same shape, which is the baseline an adaptor
must beat. A rotation adaptor (``Q`` orthogonal, no bias) is exported the same way, as
``Dense(Q, 0)``.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import orthogonal

# The choices of --adaptor / --adaptor-init and the --adaptor-weights parser live in mrl.config
# (which imports no model code); re-exported here.
from mrl.config import (  # noqa: F401
    ADAPTOR_INITS,
    ADAPTOR_KINDS,
    ADAPTOR_MODES,
    LOSS_WEIGHT_NAMES,
    parse_loss_weights,
)
from mrl.losses import DEFAULT_SCALE, matryoshka_loss, mnrl_loss, prefix

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


class Adaptor(nn.Module):
    """``f(e) = x + g(x)``, ``x = norm(e)`` (or ``x = e`` without ``normalize_input``).

    kind "linear": ``g(x) = W x + b``; "mlp": ``g(x) = W2 act(W1 x + b1) + b2`` with ``hidden``
    units. The last layer of ``g`` starts at zero, so ``f`` is the identity on x at
    initialisation; the MLP's first layer keeps PyTorch's default init so gradients reach W2.
    kind "rotation": ``f(e) = Q x`` with ``Q`` orthogonal at every step (PyTorch's orthogonal
    parametrisation, Cayley map), starting at the identity. A rotation keeps every full-width
    cosine exactly, so it changes only how the first d values share the embedding: Matryoshka
    after the fact at no cost to the full width (PCA's uncentred axes are one such Q).
    emb: (..., D) -> (..., D), un-normalised (prefixes are normalised by `mrl.losses.prefix`).
    """

    def __init__(
        self,
        dim: int,
        kind: str = "linear",
        hidden: int | None = None,
        activation: str = "gelu",
        normalize_input: bool = True,
    ):
        super().__init__()
        if kind not in ADAPTOR_KINDS:
            raise ValueError(f"adaptor kind must be one of {ADAPTOR_KINDS}, got {kind!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
        if dim < 1 or (hidden is not None and hidden < 1):
            raise ValueError(f"dim and hidden must be positive, got {dim}, {hidden}")
        self.dim, self.kind, self.activation, self.normalize_input = dim, kind, activation, normalize_input
        self.hidden = (hidden or dim) if kind == "mlp" else None
        if kind == "rotation":
            self.rotation = nn.Linear(dim, dim, bias=False)
            nn.init.eye_(self.rotation.weight)
            # Cayley rather than the default matrix exponential: 36 ms instead of 630 ms a step
            # for D=384 on one CPU thread, and the same set of rotations near the start.
            orthogonal(self.rotation, orthogonal_map="cayley")
            return
        if kind == "linear":
            self.linear = nn.Linear(dim, dim)
            last = self.linear
        else:
            self.fc1 = nn.Linear(dim, self.hidden)
            self.act = ACTIVATIONS[activation]()
            self.fc2 = nn.Linear(self.hidden, dim)
            last = self.fc2
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild the module (weights aside)."""
        return {
            "dim": self.dim,
            "kind": self.kind,
            "hidden": self.hidden,
            "activation": self.activation,
            "normalize_input": self.normalize_input,
        }

    def residual(self, x: Tensor) -> Tensor:
        """g(x) of a linear or MLP adaptor: (..., D) -> (..., D) (a rotation has no residual form)."""
        if self.kind == "linear":
            return self.linear(x)
        return self.fc2(self.act(self.fc1(x)))

    def forward(self, emb: Tensor) -> Tensor:
        x = F.normalize(emb, dim=-1, eps=1e-12) if self.normalize_input else emb
        if self.kind == "rotation":
            return self.rotation(x)
        return x + self.residual(x)

    def start_from(self, weight: Tensor, bias: Tensor | None = None) -> Adaptor:
        """Start the linear adaptor at ``f(e) = weight @ x + bias`` instead of the identity (a
        rotation adaptor at ``Q = weight``, which must be orthogonal, with no bias).

        weight: (D, D), bias: (D,). With `pca_rotation`'s orthogonal weight the adaptor starts
        at the corpus' principal axes: every full-width cosine is unchanged (a rotation keeps
        them) and each d-prefix starts as PCA's, so training begins where the closed form ends.
        """
        if self.kind == "mlp":
            raise ValueError("only a linear or rotation adaptor can start from a dense layer")
        if weight.shape != (self.dim, self.dim) or (bias is not None and bias.shape != (self.dim,)):
            shapes = (tuple(weight.shape), None if bias is None else tuple(bias.shape))
            raise ValueError(
                f"start weight and bias must be ({self.dim}, {self.dim}) and ({self.dim},), got {shapes}"
            )
        if self.kind == "rotation":
            if bias is not None and bias.abs().max().item() > 0:
                raise ValueError("a rotation adaptor has no bias: start it from a weight alone")
            w = weight.detach().double()
            error = (w @ w.T - torch.eye(self.dim, dtype=w.dtype, device=w.device)).abs().max().item()
            if error > 1e-4:
                raise ValueError(
                    f"a rotation adaptor starts from an orthogonal weight, got |W W^T - I| = {error:.1e}"
                )
            # The nearest orthogonal matrix (polar factor, float64): float32 rounding of the input
            # must not stay in every later Q (base @ cayley(A)) and loosen "cosines kept".
            u, _, vh = torch.linalg.svd(w)
            with torch.no_grad():
                self.rotation.weight = (u @ vh).to(self.rotation.weight)  # the parametrisation's base
            return self
        current = self.linear.weight
        with torch.no_grad():
            eye = torch.eye(self.dim, dtype=current.dtype, device=current.device)
            self.linear.weight.copy_(weight.to(current) - eye)
            self.linear.bias.copy_(torch.zeros_like(self.linear.bias) if bias is None else bias.to(current))
        return self

    def to_dense(self) -> tuple[Tensor, Tensor]:
        """The linear adaptor as one dense layer: ``(W', b)`` with ``W' = I + W`` (D, D), b (D,),
        so that ``f(e) = x @ W'.T + b`` (x normalised as in forward); a rotation as ``(Q, 0)``."""
        if self.kind == "mlp":
            raise ValueError(
                "only a linear or rotation adaptor is a single dense layer; an MLP is saved as itself"
            )
        if self.kind == "rotation":
            weight = self.rotation.weight.detach()
            return weight.clone(), torch.zeros(self.dim, dtype=weight.dtype, device=weight.device)
        current = self.linear.weight.detach()
        weight = current + torch.eye(self.dim, dtype=current.dtype, device=current.device)
        return weight.clone(), self.linear.bias.detach().clone()


# --------------------------------------------------------------------------------------------
# PCA: the closed-form baseline
# --------------------------------------------------------------------------------------------


def fit_pca(emb: Tensor, center: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Principal axes of ``emb`` (N, D), computed in float64.

    Returns ``(mean (D,), components (D, D), variances (D,))``: row k of ``components`` is the
    k-th principal axis (unit length, variances descending), so projecting onto the first d rows
    keeps the d directions of largest variance. ``center=False`` uses the uncentred second moment
    (the axes of ``emb.T @ emb``). Signs are fixed so that each axis' largest-magnitude entry is
    positive (SVD signs are arbitrary; this makes the result reproducible).
    """
    x = emb.double()
    mean = x.mean(0) if center else torch.zeros(x.shape[-1], dtype=x.dtype)
    second = (x - mean).T @ (x - mean) / max(x.shape[0] - (1 if center else 0), 1)  # (D, D)
    variances, vectors = torch.linalg.eigh(second)  # ascending
    order = variances.argsort(descending=True)
    variances, components = variances[order], vectors[:, order].T  # rows = axes
    pivot = components.abs().argmax(-1)
    signs = torch.sign(components.gather(-1, pivot[:, None]))  # (D, 1)
    return mean.float(), (components * signs).float(), variances.clamp(min=0).float()


def pca_dense(emb: Tensor, center: bool = True, normalize_input: bool = True) -> tuple[Tensor, Tensor]:
    """PCA of the corpus ``emb`` (N, D) as the dense layer ``y = W x + b`` an adaptor exports:
    ``x`` is the (normalised, as for the adaptor) embedding, ``W`` the principal axes (D, D),
    ``b = -W mean``. Its d-prefix is the projection on the top d axes."""
    x = F.normalize(emb.float(), dim=-1, eps=1e-12) if normalize_input else emb.float()
    mean, components, _ = fit_pca(x, center)
    return components, -(components @ mean)


def pca_rotation(emb: Tensor, normalize_input: bool = True) -> Tensor:
    """The corpus' uncentred principal axes (D, D) as a rotation of the (normalised) embeddings
    ``emb`` (N, D): orthogonal, so full-width cosines are kept exactly, while the first d output
    values are the projection on the d axes of largest second moment (PCA's prefix, uncentred)."""
    weight, _ = pca_dense(emb, center=False, normalize_input=normalize_input)
    return weight


# --------------------------------------------------------------------------------------------
# Losses: pure functions over (original, adapted) embeddings
# --------------------------------------------------------------------------------------------


def cosine_matrix(emb: Tensor) -> Tensor:
    """(B, D) -> (B, B) cosine similarities (fp32 or wider)."""
    unit = F.normalize(emb.to(torch.promote_types(emb.dtype, torch.float32)), dim=-1, eps=1e-12)
    return unit @ unit.T


def _dim_weights(dims: Sequence[int], weights: Sequence[float] | None) -> list[float]:
    weights = [1.0] * len(dims) if weights is None else list(weights)
    if len(weights) != len(dims):
        raise ValueError(f"{len(weights)} dim weights for {len(dims)} dims")
    return weights


def similarity_loss(
    original: Tensor, adapted: Tensor, dims: Sequence[int], weights: Sequence[float] | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Pairwise similarity preservation: ``sum_d w_d * mean_{i != j} |cos_d(f_i, f_j) - cos(e_i, e_j)|``.

    original: (B, D) frozen embeddings (the target is their full-width cosine); adapted: (B, D)
    = f(original). cos_d is the cosine of the d-prefixes (`mrl.losses.prefix`: slice, then
    normalise). The diagonal (always 1 on both sides) is left out. Returns
    ``(total, {"d{d}": unweighted term})``.
    """
    target = cosine_matrix(original).detach()  # (B, B)
    off = ~torch.eye(target.shape[0], dtype=torch.bool, device=target.device)
    terms, total = {}, target.new_zeros(())
    for d, w in zip(dims, _dim_weights(dims, weights)):
        sims = cosine_matrix(prefix(adapted, d))  # (B, B)
        term = (sims - target).abs()[off].mean()
        terms[f"d{d}"] = term
        total = total + w * term
    return total, terms


def neighbourhood_loss(
    original: Tensor,
    adapted: Tensor,
    dims: Sequence[int],
    k: int = 10,
    weights: Sequence[float] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Top-k neighbourhood preservation: the pairwise loss on each row's ``k`` nearest other rows.

    For row i, N_k(i) are the k rows j != i with the largest original full-width cosine (ties by
    index order of `torch.topk`); the term at dim d is ``mean_{i, j in N_k(i)} |cos_d(f_i, f_j) -
    cos(e_i, e_j)|``. k is capped at B - 1. Returns ``(total, {"d{d}": unweighted term})``.
    """
    target = cosine_matrix(original).detach()  # (B, B)
    batch = target.shape[0]
    k = min(k, batch - 1)
    if k < 1:
        raise ValueError("neighbourhood_loss needs a batch of at least 2 rows")
    # -inf on the diagonal: a row is not its own neighbour.
    masked = target.masked_fill(torch.eye(batch, dtype=torch.bool, device=target.device), float("-inf"))
    neighbours = masked.topk(k, dim=-1).indices  # (B, k)
    wanted = target.gather(1, neighbours)  # (B, k)
    terms, total = {}, target.new_zeros(())
    for d, w in zip(dims, _dim_weights(dims, weights)):
        sims = cosine_matrix(prefix(adapted, d)).gather(1, neighbours)  # (B, k)
        term = (sims - wanted).abs().mean()
        terms[f"d{d}"] = term
        total = total + w * term
    return total, terms


def listwise_loss(
    original: Tensor,
    adapted: Tensor,
    dims: Sequence[int],
    temperature: float = 0.05,
    weights: Sequence[float] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Listwise neighbourhood preservation: each row's softmax over the other rows, d-prefix vs full.

    For row i, ``p_i = softmax_j(cos(e_i, e_j) / T)`` and ``q_i = softmax_j(cos_d(f_i, f_j) / T)``
    over j != i; the term at dim d is ``mean_i KL(p_i || q_i)``. A soft top-k: with a retrieval
    temperature (T = 0.05, the scale 20 of the ranking loss) nearly all of p's mass sits on the
    nearest few rows, so the term asks the prefix to rank each row's neighbours as the full
    embedding does, and cares little about far pairs (which the pairwise loss spends most of its
    effort on). Not in Yoon et al.; added because it ranks better at small dims on SciFact
    (experiments/2026-11-30_scifact_adaptor). Returns ``(total, {"d{d}": unweighted term})``.
    """
    target = cosine_matrix(original).detach()  # (B, B)
    eye = torch.eye(target.shape[0], dtype=torch.bool, device=target.device)
    if target.shape[0] < 2:
        raise ValueError("listwise_loss needs a batch of at least 2 rows")
    log_p = torch.log_softmax(target.masked_fill(eye, float("-inf")) / temperature, dim=-1)  # (B, B)
    terms, total = {}, target.new_zeros(())
    for d, w in zip(dims, _dim_weights(dims, weights)):
        sims = cosine_matrix(prefix(adapted, d))  # (B, B)
        log_q = torch.log_softmax(sims.masked_fill(eye, float("-inf")) / temperature, dim=-1)
        # The diagonal has p = 0 (and -inf logs): leave it out of the sum.
        term = (log_p.exp() * (log_p - log_q)).masked_fill(eye, 0.0).sum(-1).mean()
        terms[f"d{d}"] = term
        total = total + w * term
    return total, terms


def reconstruction_loss(original: Tensor, adapted: Tensor, normalize_input: bool = True) -> Tensor:
    """``mean_i ||f(e_i) - x_i||^2`` with ``x = norm(e)`` (or e): how far the adaptor moved the
    embeddings (0 at initialisation). original, adapted: (B, D). A scalar."""
    x = F.normalize(original, dim=-1, eps=1e-12) if normalize_input else original
    return (adapted - x).pow(2).sum(-1).mean()


def adaptor_loss(
    original: Tensor,
    adapted: Tensor,
    dims: Sequence[int],
    weights: Sequence[float] | None = None,
    *,
    similarity_weight: float = 1.0,
    neighbourhood_weight: float = 1.0,
    k: int = 10,
    listwise_weight: float = 0.0,
    temperature: float = 0.05,
    reconstruction_weight: float = 0.0,
    normalize_input: bool = True,
    pairs: Tensor | None = None,
    ranking_weight: float = 1.0,
    scale: float = DEFAULT_SCALE,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The adaptor's objective: weighted sum of the terms above (a weight of 0 skips a term).

    original, adapted: (B, D) corpus embeddings and f of them. ``pairs``: optional (2, P, D)
    adapted (query, document) embeddings of P pairs with distinct texts, scored with the
    in-batch-negatives loss at every prefix (`mrl.losses.matryoshka_loss` over
    `mrl.losses.mnrl_loss`). Returns ``(total, terms)`` with keys ``sim_d{d}``, ``nbr_d{d}``,
    ``list_d{d}``, ``rank_d{d}`` (unweighted terms), ``rec``, and ``d{d}``: the sum at dim d of
    its terms with their loss weights (not the dim weight), so that
    ``total = sum_d w_d * d{d} + rec weight * rec``.
    """
    dim_weights = _dim_weights(dims, weights)
    total = adapted.new_zeros((), dtype=torch.promote_types(adapted.dtype, torch.float32))
    terms: dict[str, Tensor] = {}
    per_dim = {f"d{d}": total.new_zeros(()) for d in dims}
    parts = []
    if similarity_weight:
        parts.append(("sim", similarity_weight, similarity_loss(original, adapted, dims, dim_weights)))
    if neighbourhood_weight:
        nbr = neighbourhood_loss(original, adapted, dims, k, dim_weights)
        parts.append(("nbr", neighbourhood_weight, nbr))
    if listwise_weight:
        listwise = listwise_loss(original, adapted, dims, temperature, dim_weights)
        parts.append(("list", listwise_weight, listwise))
    if pairs is not None and ranking_weight:
        base = partial(mnrl_loss, scale=scale)
        parts.append(("rank", ranking_weight, matryoshka_loss(base, pairs, None, dims, dim_weights)))
    for name, loss_weight, (part_total, part_terms) in parts:
        total = total + loss_weight * part_total
        for key, term in part_terms.items():
            terms[f"{name}_{key}"] = term
            per_dim[key] = per_dim[key] + loss_weight * term
    if reconstruction_weight:
        terms["rec"] = reconstruction_loss(original, adapted, normalize_input)
        total = total + reconstruction_weight * terms["rec"]
    terms.update(per_dim)
    return total, terms


# --------------------------------------------------------------------------------------------
# Data: the corpus to adapt to, and optional (query, document) pairs
# --------------------------------------------------------------------------------------------


def load_corpus_texts(
    spec: str | os.PathLike, text_columns: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
    """``(ids, texts)`` of the corpus an adaptor is trained on.

    - a BEIR folder or its ``corpus.jsonl`` (fields ``_id``, ``title``, ``text``): "title text"
      as BEIR joins them (`mrl.retrieval.load_corpus`), ids are the doc ids;
    - any other table file (`mrl.data.load_examples`: .csv/.tsv/.jsonl with a header) with
      ``text_columns`` (default: a ``text`` column, else the detected pair layout): every distinct
      text of those columns, in order of first appearance; ids are the texts.
    Errors are one line naming the file (ValueError / `mrl.data.DataError`).
    """
    from mrl.data import load_examples, read_rows
    from mrl.retrieval import load_corpus

    path = Path(spec)
    if path.is_dir():
        path = path / "corpus.jsonl"
    if path.suffix.lower() == ".jsonl" and text_columns is None:
        header, _ = read_rows(path)
        if "_id" in header and "text" in header:  # BEIR layout
            corpus = load_corpus(path)
            return list(corpus), list(corpus.values())
    if text_columns is None:
        header, _ = read_rows(path)
        text_columns = ["text"] if "text" in header else None
    examples = load_examples(path, text_columns)
    texts = list(dict.fromkeys(t for column in examples.columns for t in column))
    return texts, texts


def load_pair_texts(
    spec: str | os.PathLike, corpus: dict[str, str] | None = None
) -> tuple[list[str], list[str]]:
    """``(query texts, document texts)`` of (query, relevant document) pairs, one per pair.

    - a BEIR split folder with ``queries.jsonl`` and ``qrels.tsv`` (or ``qrels/train.tsv``), as
      SciFact's ``train/``: every qrel with grade > 0; the documents are looked up by id in
      ``corpus`` (id -> text; a missing one is an error);
    - a table file with two text columns (query, document), read by `mrl.data.load_examples`
      (detected layouts: anchor/positive, query/positive, sentence1/sentence2...).
    """
    from mrl.data import load_examples
    from mrl.retrieval import load_qrels, load_queries

    path = Path(spec)
    if not path.is_dir():
        examples = load_examples(path)
        if examples.n_columns < 2:
            raise ValueError(f"{path}: pairs need two text columns (query, document)")
        return list(examples.columns[0]), list(examples.columns[1])
    qrels_path = next((q for q in (path / "qrels.tsv", path / "qrels" / "train.tsv") if q.is_file()), None)
    if qrels_path is None:
        raise ValueError(f"{path}: a pairs folder needs queries.jsonl and qrels.tsv (or qrels/train.tsv)")
    queries = load_queries(path / "queries.jsonl")
    qrels = load_qrels(qrels_path)
    corpus = corpus or {}
    query_texts, doc_texts = [], []
    for qid, rels in qrels.items():
        if qid not in queries:
            raise ValueError(f"{qrels_path}: query {qid!r} is not in {path / 'queries.jsonl'}")
        for doc_id, grade in rels.items():
            if grade <= 0:
                continue
            if doc_id not in corpus:
                raise ValueError(f"{qrels_path}: document {doc_id!r} is not in the corpus (--train-data)")
            query_texts.append(queries[qid])
            doc_texts.append(corpus[doc_id])
    if not query_texts:
        raise ValueError(f"{qrels_path}: no (query, document) pair with a positive grade")
    return query_texts, doc_texts


def corpus_neighbours(corpus: Tensor, m: int) -> Tensor:
    """(N, m): the indices of each row's ``m`` nearest other rows by full-width cosine, nearest
    first. Exact search in chunks (`mrl.retrieval.exact_search`), so no (N, N) matrix is built.
    The row itself is left out even when a duplicate vector ties with it."""
    from mrl.retrieval import exact_search

    n = corpus.shape[0]
    if not 1 <= m < n:
        raise ValueError(f"neighbours per row must be in 1..{n - 1} (the corpus has {n} rows), got {m}")
    unit = F.normalize(corpus.float(), dim=-1, eps=1e-12)
    _, index = exact_search(unit, unit, m + 1)  # (N, m + 1), usually the row itself first
    is_self = index == torch.arange(n)[:, None]
    # A stable sort on "is it the row itself" moves it last and keeps the others in rank order.
    order = is_self.to(torch.int8).argsort(dim=-1, stable=True)
    return index.gather(1, order)[:, :m]


class NeighbourBatchSampler:
    """Batches of ``anchors`` random corpus rows plus each anchor's ``m`` nearest neighbours.

    Random rows of a large corpus are mostly unrelated, so in a random batch the top-k and
    listwise losses see few real neighbours; here every anchor brings its own neighbourhood
    (from `corpus_neighbours`), so they preserve the rankings that retrieval uses. An epoch is
    one pass over the rows as anchors (``N // anchors`` batches, the rest dropped), shuffled by
    (seed, epoch) as `mrl.data.BatchSampler` does, so a resumed run rebuilds it exactly. A row
    that is near two anchors appears once (batches hold at most ``anchors * (1 + m)`` rows).
    """

    def __init__(self, neighbours: Tensor, batch_size: int, seed: int = 0):
        self.neighbours = neighbours  # (N, m)
        self.n, m = neighbours.shape
        self.anchors = max(1, batch_size // (1 + m))
        if self.anchors > self.n:
            raise ValueError(f"{self.anchors} anchors a batch but only {self.n} rows")
        self.seed = seed

    def batches(self, epoch: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed((self.seed * 0x9E3779B1 + epoch) % 2**32)
        order = torch.randperm(self.n, generator=generator)
        batches = []
        for start in range(0, self.n - self.anchors + 1, self.anchors):
            anchors = order[start : start + self.anchors]
            rows = torch.cat([anchors, self.neighbours[anchors].flatten()])
            batches.append(torch.unique(rows).tolist())  # sorted, each row once
        return batches

    def __len__(self) -> int:
        return self.n // self.anchors


@dataclass
class AdaptorData:
    """The frozen vectors an adaptor trains on (all raw, un-normalised, float32).

    corpus: (N, D). pairs: (2, P, D) query and document of each pair, or None. pair_keys: two
    lists of P strings naming each side's text, so that a batch of pairs can avoid repeats (a
    repeated document would be a false negative). dev: ``{name: (emb1 (M, D), emb2 (M, D),
    scores)}`` STS dev sets. info: counts and sources for the run's config and the model's recipe.
    """

    corpus: Tensor
    pairs: Tensor | None = None
    pair_keys: list[list[str]] | None = None
    dev: dict[str, tuple[Tensor, Tensor, list[float]]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class AdaptorTexts:
    """The texts an adaptor trains on, read before anything is encoded (so that what they cannot
    give is refused first): the corpus' ids and texts, and the pairs' queries and documents."""

    ids: list[str]
    texts: list[str]
    queries: list[str] | None = None
    docs: list[str] | None = None


def load_adaptor_texts(
    corpus_spec: str, pairs_spec: str | None = None, text_columns: Sequence[str] | None = None
) -> AdaptorTexts:
    """The corpus (`load_corpus_texts`, at least 2 texts) and the pairs (`load_pair_texts`)."""
    ids, texts = load_corpus_texts(corpus_spec, text_columns)
    if len(texts) < 2:
        raise ValueError(f"{corpus_spec}: an adaptor needs a corpus of at least 2 texts, got {len(texts)}")
    loaded = AdaptorTexts(ids, texts)
    if pairs_spec is not None:
        loaded.queries, loaded.docs = load_pair_texts(pairs_spec, dict(zip(ids, texts)))
    return loaded


def embed_adaptor_data(
    encoder,
    corpus_spec: str,
    pairs_spec: str | None = None,
    dev_sets: dict | None = None,
    cache_dir: str | Path | None = None,
    text_columns: Sequence[str] | None = None,
    batch_size: int = 64,
    log=print,
    loaded: AdaptorTexts | None = None,
) -> AdaptorData:
    """Embed the corpus, the pairs' texts and the dev sets with the frozen ``encoder``, each text
    set at most once across runs (`mrl.embcache.cached_embeddings` under ``cache_dir``).

    corpus_spec: `load_corpus_texts`; pairs_spec: `load_pair_texts` (documents that are corpus
    texts reuse the corpus vectors); dev_sets: ``{name: mrl.data.Examples}`` with two text
    columns and scores; loaded: what `load_adaptor_texts` read of the first two, if done already.
    """
    from mrl.embcache import cached_embeddings, texts_key

    loaded = loaded or load_adaptor_texts(corpus_spec, pairs_spec, text_columns)
    texts = loaded.texts
    # A bar for people at a terminal (encoding a corpus takes minutes), none in logs.
    bar = sys.stderr.isatty()
    corpus = cached_embeddings(encoder, texts, cache_dir, batch_size, show_progress=bar, log=log)
    data = AdaptorData(corpus, info={"corpus": str(corpus_spec), "corpus_texts": len(texts)})
    data.info["corpus_sha256"] = texts_key(texts)
    if pairs_spec is not None:
        queries, docs = loaded.queries, loaded.docs
        row = {text: i for i, text in enumerate(texts)}
        # Only texts the corpus lacks are encoded (queries, and documents from a pair file).
        extra = list(dict.fromkeys(t for t in [*queries, *docs] if t not in row))
        extra_emb = cached_embeddings(encoder, extra, cache_dir, batch_size, log=log) if extra else None
        extra_row = {text: i for i, text in enumerate(extra)}

        def lookup(batch: list[str]) -> Tensor:
            return torch.stack([corpus[row[t]] if t in row else extra_emb[extra_row[t]] for t in batch])

        data.pairs = torch.stack([lookup(queries), lookup(docs)])  # (2, P, D)
        data.pair_keys = [queries, docs]
        data.info.update(pairs=str(pairs_spec), n_pairs=len(queries))
    for name, examples in (dev_sets or {}).items():
        unique = list(dict.fromkeys([*examples.columns[0], *examples.columns[1]]))
        emb = cached_embeddings(encoder, unique, cache_dir, batch_size, log=log)
        index = {text: i for i, text in enumerate(unique)}
        first = emb[[index[t] for t in examples.columns[0]]]
        second = emb[[index[t] for t in examples.columns[1]]]
        data.dev[name] = (first, second, list(examples.scores))
    return data


def load_adaptor_data(embeddings: str | Path, pairs: str | Path | None = None) -> AdaptorData:
    """Precomputed vectors (a closed API's): the corpus from ``embeddings`` (`mrl.embcache.
    load_embeddings`), pairs from a .safetensors file holding ``query`` and ``document`` (P, D).
    Repeated documents are recognised by their bytes."""
    from mrl.embcache import load_embeddings

    corpus = load_embeddings(embeddings)
    data = AdaptorData(corpus, info={"corpus": str(embeddings), "corpus_texts": corpus.shape[0]})
    if pairs is not None:
        query, document = load_embeddings(pairs, key="query"), load_embeddings(pairs, key="document")
        if query.shape != document.shape or query.shape[1] != corpus.shape[1]:
            raise ValueError(
                f"{pairs}: 'query' {tuple(query.shape)} and 'document' {tuple(document.shape)} must both "
                f"be (P, {corpus.shape[1]}) like the corpus"
            )
        data.pairs = torch.stack([query, document])
        digest = lambda v: hashlib.sha1(v.numpy().tobytes()).hexdigest()  # noqa: E731
        data.pair_keys = [[digest(v) for v in side] for side in data.pairs]
        data.info.update(pairs=str(pairs), n_pairs=query.shape[0])
    return data
