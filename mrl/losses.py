"""Losses over embeddings: CoSENT, in-batch negatives, the Matryoshka / 2D wrappers, self-distillation.

Every function here is pure: it takes embeddings and labels and returns tensors. Nothing logs,
reads a config or touches the model; the encoder runs once per step in `train.py` and its output is
reused by every dim and every layer below.

Layout (see `mrl.model.Encoder`): a batch of C text columns with B rows each is encoded once to
(C*B, D) and viewed as a **columns tensor** ``(C, B, D)``: CoSENT uses C = 2 (u, v); in-batch
negatives use C >= 2 (anchor, positive, hard negatives...). For 2D the encoder also gives every
layer: ``(L, C, B, D)`` where index ``l - 1`` holds the output of transformer block ``l``.

Base losses share one signature, ``base_loss(columns, labels) -> scalar``, so the wrappers can take
any of them (bind ``scale``/``symmetric`` with ``functools.partial``). They expect unit vectors:
the wrappers pass ``prefix(columns, d)``; they re-normalise anyway, which is idempotent and makes
them safe to call on raw embeddings.

Self-distillation terms share ``distill(student (N, d), teacher (N, d')) -> scalar``: the model's
own final layer (or full width) is the teacher, detached, and a shallow cell (or a small prefix)
learns its in-batch similarity structure over the N = C*B texts of the batch.

Teacher distillation (``--teacher``) compares the student with another, frozen model's cached
embeddings of the same texts, at every Matryoshka dim (`teacher_distill_loss`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

BaseLoss = Callable[[Tensor, Tensor | None], Tensor]
# A distillation term between two sets of embeddings: (student (N, d), teacher (N, d')) -> scalar.
Distill = Callable[[Tensor, Tensor], Tensor]


def at_least_fp32(x: Tensor) -> Tensor:
    """``x`` in fp32 (float64 stays float64): the dtype every loss computes in."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def no_autocast(x: Tensor) -> torch.autocast:
    """A context with autocast off on ``x``'s device, for the body of a loss.

    Under fp16/bf16 autocast a matmul runs in half precision whatever its inputs: in-batch logits
    ``scale * cos`` near 20 would be rounded to steps of 0.125 (bf16). Every loss here computes its
    similarities and softmaxes inside this context on `at_least_fp32` inputs; the encoder before
    it still runs under autocast.
    """
    return torch.autocast(x.device.type, enabled=False)


# Upstream's default temperature 0.05 for both losses (scale = 1 / temperature).
DEFAULT_SCALE = 20.0


def prefix(emb: Tensor, d: int) -> Tensor:
    """The Matryoshka prefix of width ``d``: slice the first ``d`` values, then re-normalise.

    emb: (..., D) un-normalised embeddings -> (..., d) unit vectors. Slicing a vector that was
    normalised at full width would leave prefixes with norm < 1, which silently changes the
    temperature of every similarity computed from them; hence slice first.
    """
    return F.normalize(emb[..., :d], p=2, dim=-1, eps=1e-12)


# --------------------------------------------------------------------------------------------
# Base losses
# --------------------------------------------------------------------------------------------


def cosent_loss(columns: Tensor, scores: Tensor, scale: float = DEFAULT_SCALE) -> Tensor:
    """CoSENT (Su, 2022): rank the pair cosines in the order of their gold scores.

    columns: (2, B, d) the two sides of B pairs; scores: (B,) real-valued gold similarity.
    ``L = log(1 + sum_{(i, j): y_i < y_j} exp(s_i - s_j))`` with ``s = scale * cos(u, v)``.
    Only the order of the scores matters; ties contribute nothing. Returns a scalar.
    """
    if columns.shape[0] != 2:
        raise ValueError(f"cosent_loss needs 2 text columns, got {columns.shape[0]}")
    with no_autocast(columns):
        columns = at_least_fp32(columns)
        u = F.normalize(columns[0], dim=-1, eps=1e-12)
        v = F.normalize(columns[1], dim=-1, eps=1e-12)
        s = scale * (u * v).sum(-1)  # (B,) similarity logits
        diff = s[:, None] - s[None, :]  # (B, B): diff[i, j] = s_i - s_j
        lower = scores[:, None] < scores[None, :]  # (B, B): y_i < y_j, strict so ties are ignored
        diff = diff.masked_fill(~lower, float("-inf"))
        # Prepend a 0 logit for the "1 +" inside the log; logsumexp keeps it stable.
        logits = torch.cat([diff.new_zeros(1), diff.flatten()])
        return torch.logsumexp(logits, dim=0)


def mnrl_loss(
    columns: Tensor,
    labels: Tensor | None = None,
    scale: float = DEFAULT_SCALE,
    symmetric: bool = False,
    local: slice | None = None,
) -> Tensor:
    """In-batch negatives (MultipleNegativesRanking / InfoNCE with hard negatives).

    columns: (C, B, d), C >= 2: anchors, positives, then C - 2 columns of hard negatives.
    Anchor i is scored against all C-1 columns laid side by side, ``((C-1)*B,)`` candidates, and
    its target is candidate i (its own positive): it sees B - 1 other positives and (C-2)*B hard
    negatives. ``symmetric`` averages with the positive -> anchor direction (positives scored
    against the B anchors only). ``labels`` is unused; it keeps the base-loss signature.
    Returns the mean cross-entropy, a scalar.

    ``local`` (across GPUs): ``columns`` is then the GLOBAL batch gathered from all ranks,
    (C, G, d) with G = world * B, and ``local = slice(r * B, (r + 1) * B)`` marks rank r's rows
    (`mrl.dist.rank_slice`). Only the local anchors are scored, against all G rows of every
    candidate column, laid out exactly as in one process (the G positives, then hard-negative
    column 1 for all G rows, ...); local anchor i's target is ``local.start + i``. The symmetric
    term scores the local positives against all G anchors with the same targets. The loss is the
    mean over the local anchors. ``local=None`` is the single-process loss.
    """
    n_cols, batch = columns.shape[0], columns.shape[1]
    if n_cols < 2:
        raise ValueError(f"mnrl_loss needs at least 2 text columns (anchor, positive), got {n_cols}")
    local = slice(0, batch) if local is None else local
    if local.step not in (None, 1) or not 0 <= (local.start or 0) < (local.stop or -1) <= batch:
        raise ValueError(f"local must be a slice(start, stop) inside 0..{batch}, got {local}")
    start = local.start or 0
    # Who gets which gradient (with columns = mrl.dist.gather_with_grad(local columns)):
    # rank r's loss L_r depends on its own anchors and on every rank's positives/negatives (and
    # every rank's anchors, for the symmetric term). all_gather's backward sums, for each rank,
    # the gradients that all ranks' losses send to that rank's slice and returns them there, so
    # rank r's embeddings receive sum_q dL_q / dE_r, and backprop through rank r's encoder gives
    # rank r the gradient of sum_q L_q through the texts that rank r encoded.
    # Why the loss is NOT multiplied by the world size W: DDP *averages* parameter gradients over
    # ranks, giving (1/W) * sum_r dL_r. Each L_r is a mean over B anchors, so (1/W) * sum_r L_r is
    # the mean over all G anchors: exactly the single-process loss on the global batch.
    # Losses computed on the full gathered batch identically on every rank (CoSENT with gathered
    # labels and no `local`, the 2D KL term) are W copies of the global loss; their gradient comes
    # back W times through all_gather and DDP's 1/W cancels it. So every loss here equals
    # single-process training on the global batch.
    with no_autocast(columns):
        unit = F.normalize(at_least_fp32(columns), dim=-1, eps=1e-12)
        anchors = unit[0, local]  # (b, d): the anchors scored here (b = B, or the local rows)
        candidates = unit[1:].reshape((n_cols - 1) * batch, -1)  # ((C-1)*B, d): positives first
        logits = scale * (anchors @ candidates.T)  # (b, (C-1)*B)
        target = torch.arange(start, local.stop, device=columns.device)  # (b,)
        loss = F.cross_entropy(logits, target)
        if symmetric:
            # (b, B): local positive i scored against all anchors
            backward_logits = scale * (unit[1, local] @ unit[0].T)
            loss = (loss + F.cross_entropy(backward_logits, target)) / 2
        return loss


# The similarity directions of `gte_loss`, each a block of logits in the softmax of anchor i:
# query i against every document, against every other query, document i (its positive) against
# every query, and against every document of another query.
DIRECTIONS = ("query-doc", "query-query", "doc-query", "doc-doc")
PARTITION_MODES = ("joint", "per-direction")
# Which negatives of the query -> doc block get the hardness term (Lan et al. 2025).
HARDNESS_MODES = ("off", "in-batch", "hard", "all")


def gte_loss(
    columns: Tensor,
    labels: Tensor | None = None,
    scale: float = DEFAULT_SCALE,
    directions: Sequence[str] = DIRECTIONS,
    partition_mode: str = "joint",
    hardness: str = "off",
    hardness_strength: float = 0.0,
    local: slice | None = None,
) -> Tensor:
    """In-batch negatives in several directions (GTE, Li et al. 2023) with hardness weighting.

    columns: (C, B, d), C >= 2: queries q, positives p (= documents column 1), then C - 2 columns
    of hard negatives; all C - 1 document columns laid side by side are the documents
    ``D = [p; n_1; ...]`` ((C-1)*B rows). With ``s = scale * cos``, anchor i's logit blocks are

    - "query-doc" ``s(q_i, D_j)`` for every document (always on: it holds the positive ``p_i``);
    - "query-query" ``s(q_i, q_j)``, j != i (self-similarity masked);
    - "doc-query" ``s(p_i, q_j)`` for every query (j = i included: the positive pair again);
    - "doc-doc" ``s(p_i, D_j)`` for every document of another query (p_i itself and the other
      documents of query i masked: they are not negatives of p_i).

    ``partition_mode="joint"``: one softmax over every chosen block, ``L_i = -s(q_i, p_i) +
    logsumexp(all blocks)`` (GTE's improved contrastive loss with all four). "per-direction": the
    mean over blocks of each block's own logsumexp, ``L_i = mean_b(logsumexp(block b)) - s(q_i,
    p_i)``; only directions that contain the positive are allowed (query-doc, doc-query: the two
    together are `mnrl_loss(symmetric=True)`). The loss is the mean of ``L_i`` over anchors.

    ``hardness`` (Lan et al. 2025, arXiv:2503.04812, Eq. 5): ``hardness_strength * stopgrad(cos(q_i,
    D_j))`` (alpha times the raw cosine, not scaled) is added to the query-doc logit of each
    negative of the chosen kind, so harder negatives weigh more in the softmax: "in-batch" other
    queries' documents, "hard" query i's own hard negatives, "all" both; never the positive. Other
    blocks get no hardness term (as upstream). ``labels`` is unused (the base-loss signature).

    ``local`` (across GPUs): ``columns`` is the GLOBAL batch (C, G, d) gathered with gradient
    (`mrl.dist.gather_with_grad`) and ``local`` rank r's rows, exactly as in `mnrl_loss`: only
    the local anchors (and their positives, for doc-query / doc-doc) are scored, against every
    rank's queries and documents, and the loss is the mean over local anchors, so the ranks'
    mean is the single-process loss on the global batch (see `mnrl_loss` for the gradients).
    """
    n_cols, batch = columns.shape[0], columns.shape[1]
    if n_cols < 2:
        raise ValueError(f"gte_loss needs at least 2 text columns (query, positive), got {n_cols}")
    unknown = [x for x in directions if x not in DIRECTIONS]
    if unknown or "query-doc" not in directions or len(set(directions)) != len(directions):
        raise ValueError(
            f"directions must be distinct among {DIRECTIONS} and hold 'query-doc', got {directions}"
        )
    if partition_mode not in PARTITION_MODES:
        raise ValueError(f"partition_mode must be one of {PARTITION_MODES}, got {partition_mode!r}")
    if partition_mode == "per-direction" and {"query-query", "doc-doc"} & set(directions):
        raise ValueError(
            "per-direction partition needs every block to hold the positive: query-doc, doc-query"
        )
    if hardness not in HARDNESS_MODES:
        raise ValueError(f"hardness must be one of {HARDNESS_MODES}, got {hardness!r}")
    local = slice(0, batch) if local is None else local
    if local.step not in (None, 1) or not 0 <= (local.start or 0) < (local.stop or -1) <= batch:
        raise ValueError(f"local must be a slice(start, stop) inside 0..{batch}, got {local}")
    with no_autocast(columns):
        unit = F.normalize(at_least_fp32(columns), dim=-1, eps=1e-12)
        queries = unit[0]  # (G, d), G = B (or world * B, gathered)
        docs = unit[1:].reshape((n_cols - 1) * batch, -1)  # ((C-1)*G, d): positives first
        own_rows = torch.arange(local.start or 0, local.stop, device=columns.device)  # (b,)
        n = own_rows.shape[0]
        anchor = torch.arange(n, device=columns.device)
        own = torch.zeros(n, batch, dtype=torch.bool, device=columns.device)  # (b, G): row j is i's
        own[anchor, own_rows] = True
        own_docs = own.repeat(1, n_cols - 1)  # (b, (C-1)*G): query i's positive and hard negatives
        cos = {"query-doc": queries[local] @ docs.T}  # (b, (C-1)*G)
        masks = {}  # pairs that are not negatives of anchor i: left out of its softmax
        if "query-query" in directions:
            cos["query-query"], masks["query-query"] = queries[local] @ queries.T, own  # (b, G)
        if "doc-query" in directions:
            cos["doc-query"] = unit[1, local] @ queries.T  # (b, G)
        if "doc-doc" in directions:
            cos["doc-doc"], masks["doc-doc"] = unit[1, local] @ docs.T, own_docs  # (b, (C-1)*G)
        logits = {key: scale * cos[key] for key in directions}  # in the given order
        for key, mask in masks.items():
            logits[key] = logits[key].masked_fill(mask, float("-inf"))
        if hardness != "off" and hardness_strength > 0:
            hard_column = torch.arange(docs.shape[0], device=columns.device) >= batch  # ((C-1)*G,)
            boosted = {
                "in-batch": ~own_docs,
                "hard": own_docs & hard_column,
                "all": ~(own_docs & ~hard_column),  # every document but the positive
            }[hardness]
            penalty = hardness_strength * cos["query-doc"].detach()
            logits["query-doc"] = logits["query-doc"] + penalty.masked_fill(~boosted, 0.0)
        positive = logits["query-doc"][anchor, own_rows]  # (b,)
        if partition_mode == "joint":
            log_z = torch.logsumexp(torch.cat(list(logits.values()), dim=1), dim=1)  # (b,)
        else:
            log_z = torch.stack([torch.logsumexp(x, dim=1) for x in logits.values()]).mean(0)
        return (log_z - positive).mean()


# --------------------------------------------------------------------------------------------
# Matryoshka: the same base loss at nested prefixes of one embedding
# --------------------------------------------------------------------------------------------


def check_dims(dims: Sequence[int], model_dim: int | None = None, flag: str = "dims") -> None:
    """Dims must be positive, unique and (given ``model_dim``) at most the model dim.

    The one dims check: config validation (``flag="--dims"``, before the model is loaded and
    again against it) and callers of the losses use it. Raises ValueError naming ``flag``.
    """
    if len(dims) == 0:
        raise ValueError(f"{flag}: give at least one dim")
    bad = [d for d in dims if int(d) != d or d <= 0 or (model_dim is not None and d > model_dim)]
    if bad:
        limit = (
            f"integers in 1..{model_dim} (the model's embedding dim)" if model_dim else "positive integers"
        )
        raise ValueError(f"{flag} must be {limit}; got {bad}")
    if len(set(dims)) != len(dims):
        raise ValueError(f"{flag} must be unique; got {list(dims)}")


def sample_subset(n: int, k: int | None, generator: torch.Generator | None) -> list[int]:
    """Indices of ``k`` of ``n`` items drawn without replacement, in their original order
    (all of them when ``k`` is None or >= n). Uses ``generator`` so runs replay on resume."""
    if k is None or k >= n:
        return list(range(n))
    return sorted(torch.randperm(n, generator=generator)[:k].tolist())


def matryoshka_loss(
    base_loss: BaseLoss,
    columns: Tensor,
    labels: Tensor | None,
    dims: Sequence[int],
    weights: Sequence[float] | None = None,
    n_dims_per_step: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Nested-prefix loss (Kusupati et al., 2022): ``sum_k w_k * base_loss(prefix(E, d_k))``.

    columns: (C, B, D) un-normalised embeddings from ONE encoder pass; every dim reuses it.
    A weighted **sum** over dims, not a mean: with 5 dims at weight 1 the gradient is ~5x that of
    the plain loss, which is the convention of the Matryoshka paper and of upstream tools.
    ``n_dims_per_step``: sample that many dims each step (weights of the sampled dims are kept).
    Returns ``(total, {"d{dim}": unweighted term})`` for the dims used this step.
    """
    weights = [1.0] * len(dims) if weights is None else list(weights)
    if len(weights) != len(dims):
        raise ValueError(f"{len(weights)} dim weights for {len(dims)} dims")
    terms: dict[str, Tensor] = {}
    total = columns.new_zeros((), dtype=torch.promote_types(columns.dtype, torch.float32))
    for k in sample_subset(len(dims), n_dims_per_step, generator):
        term = base_loss(prefix(columns, dims[k]), labels)
        terms[f"d{dims[k]}"] = term
        total = total + weights[k] * term
    return total, terms


# --------------------------------------------------------------------------------------------
# 2D: layers x dims
# --------------------------------------------------------------------------------------------


def layer_kl(final: Tensor, layer: Tensor, temperature: float, detach_target: bool = True) -> Tensor:
    """``T * KL(softmax(final / T) || softmax(layer / T))`` over the embedding values, batch mean.

    final, layer: (..., d) embeddings (all leading axes are treated as the batch). Pulls the
    distribution of a shallow layer's values toward the final layer's (2DMSE). With
    ``detach_target`` the final layer is a fixed target; upstream did not detach, which lets
    the KL term also drag the final layer toward the shallow one.
    """
    if detach_target:
        final = final.detach()
    d = final.shape[-1]
    with no_autocast(layer):
        log_q = F.log_softmax(at_least_fp32(layer.reshape(-1, d)) / temperature, dim=-1)
        log_p = F.log_softmax(at_least_fp32(final.reshape(-1, d)) / temperature, dim=-1)
        # kl_div(input=log q, target=log p, log_target) = sum p (log p - log q) = KL(p || q)
        return temperature * F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


# How much an earlier layer's Matryoshka loss counts in 2D random layer dropping.
# "proportional" is ours (the default); the other three are upstream's AdaptiveLayerLoss weightings,
# under clear names: its "uniform" and "log" as they are, its "linear" as "reciprocal".
DEPTH_WEIGHTINGS = ("proportional", "uniform", "log", "reciprocal")
# The upstream weightings draw among hidden states 0..L-1, the embedding layer's output (hidden
# state 0, before any block) included, and average the drawn layers' losses (issue 25).
AVERAGED_WEIGHTINGS = ("uniform", "log", "reciprocal")


def depth_weight(layer: int, num_layers: int, weighting: str) -> float:
    """Weight of the loss at hidden state ``layer`` of a model with ``num_layers`` blocks.

    ``layer`` is the hidden-state index: 0 is the embedding layer's output (before any block),
    ``l`` in 1..L is block ``l``'s output. It is upstream's ``idx`` (AdaptiveLayerLoss draws among
    hidden states 0..L-1 and weighs by that index; issue 25 fixed our off-by-one).

    - "proportional" (ours, the default): ``layer / num_layers``: deeper blocks, which are asked
      to be nearly as good as the final one, count more. The embedding output (only a candidate
      with ``--embedding-candidate``) weighs as block 1, ``1 / num_layers``: ``0 / L`` would
      leave it only its KL term.
    - upstream's: "uniform" ``1`` (its current default), "log" ``1 / (1 + ln(1 + idx))`` and
      "reciprocal" ``1 / (1 + idx)`` (upstream's "linear", its old default: the embedding output
      gets weight 1, block 1 gets 1/2).
    """
    idx = layer
    if weighting == "proportional":
        return max(layer, 1) / num_layers
    if weighting == "uniform":
        return 1.0
    if weighting == "log":
        return 1.0 / (1.0 + math.log(1 + idx))
    if weighting == "reciprocal":
        return 1.0 / (1 + idx)
    raise ValueError(f"depth weighting must be one of {DEPTH_WEIGHTINGS}, got {weighting!r}")


def layer_dropping_loss(
    base_loss: BaseLoss,
    layer_columns: Tensor,
    labels: Tensor | None,
    dims: Sequence[int],
    weights: Sequence[float] | None = None,
    n_dims_per_step: int | None = None,
    n_layers_per_step: int = 1,
    last_layer_weight: float = 1.0,
    prior_layers_weight: float = 1.0,
    kl_weight: float = 1.0,
    kl_temperature: float = 0.3,
    depth_weighting: str = "proportional",
    detach_kl_target: bool = True,
    generator: torch.Generator | None = None,
    distill: Distill | None = None,
    distill_weight: float = 1.0,
    embedding_layer: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """2D Matryoshka by random layer dropping (2DMSE v1, Li et al., 2024).

    layer_columns: (L, C, B, D) pooled embeddings of every block from one forward pass, or with
    ``embedding_layer`` (L + 1, C, B, D) whose row 0 is the pooled embedding-layer output (hidden
    state 0, before any block; `mrl.model.Encoder.forward(..., embedding_layer=True)`) and row
    ``l`` block ``l``. The candidates are the hidden states below the final one: 0..L-1 with
    ``embedding_layer`` (upstream's L candidates), else blocks 1..L-1.

    Each step: ``last_layer_weight * M(final)`` plus, for ``n_layers_per_step`` candidates ``l``
    drawn uniformly (-1: every candidate), ``prior_layers_weight * share * depth_weight(l) *
    M(layer l)`` and ``kl_weight * layer_kl(final, layer l)``, where ``M`` is the Matryoshka loss
    over ``dims`` and ``l`` the hidden-state index (upstream's idx). ``share`` is 1 / (number
    drawn) for upstream's weightings (uniform, log, reciprocal: upstream averages the drawn
    layers) and 1 for our "proportional" (a sum, as our recorded runs used; with one layer a step
    the two agree). The KL terms are summed, not averaged, as upstream does. Upstream's weightings
    need the embedding output among the candidates (``embedding_layer=True``; before issue 25 we
    drew among blocks 1..L-1 with idx = l - 1, which is not upstream's sum).

    Upstream (sentence-transformers' Matryoshka2dLoss, current version) is
    ``depth_weighting="uniform"``, ``n_dims_per_step=1`` and the detached KL target (our default);
    old upstream versions used "reciprocal" and ``detach_kl_target=False``.
    Returns ``(total, terms)`` with the final layer's ``"d{dim}"`` terms, each sampled layer's
    ``"l{l}"`` Matryoshka term (unweighted; ``"l0"`` the embedding output) and ``"kl"`` (sum over
    sampled layers). ``distill`` (layer self-distillation, e.g. ``partial(similarity_distill,
    kind="kl")``): each sampled block, at each dim trained this step, also learns the final
    layer's in-batch similarity structure at that dim (the embedding output does not);
    ``distill_weight`` times their sum is added as ``"distill"``.
    """
    if depth_weighting not in DEPTH_WEIGHTINGS:
        raise ValueError(f"depth weighting must be one of {DEPTH_WEIGHTINGS}, got {depth_weighting!r}")
    if depth_weighting in AVERAGED_WEIGHTINGS and not embedding_layer:
        raise ValueError(
            f"depth weighting {depth_weighting!r} (upstream's) draws among hidden states 0..L-1: pass "
            "the embedding output as row 0 of layer_columns and embedding_layer=True"
        )
    first = 0 if embedding_layer else 1  # hidden-state index of row 0
    blocks = layer_columns[1:] if embedding_layer else layer_columns  # (L, C, B, D): block l at l - 1
    num_layers = blocks.shape[0]
    final = blocks[-1]  # (C, B, D)
    total, terms = matryoshka_loss(base_loss, final, labels, dims, weights, n_dims_per_step, generator)
    total = last_layer_weight * total
    k = None if n_layers_per_step < 0 else n_layers_per_step
    kl_total = total.new_zeros(())
    distill_total = total.new_zeros(())
    sampled = sample_subset(layer_columns.shape[0] - 1, k, generator)  # rows of the candidates
    share = 1.0 / len(sampled) if depth_weighting in AVERAGED_WEIGHTINGS and sampled else 1.0
    for row in sampled:
        layer = row + first  # hidden-state index: 0 the embedding output, l block l
        emb = layer_columns[row]
        layer_loss, layer_terms = matryoshka_loss(
            base_loss, emb, labels, dims, weights, n_dims_per_step, generator
        )
        terms[f"l{layer}"] = layer_loss
        weight = prior_layers_weight * share * depth_weight(layer, num_layers, depth_weighting)
        total = total + weight * layer_loss
        if kl_weight > 0:
            kl_total = kl_total + layer_kl(final, emb, kl_temperature, detach_kl_target)
        if distill is not None and layer >= 1:  # the dims this block was trained at (keys "d{dim}")
            cells = [(layer, int(key[1:])) for key in layer_terms]
            distill_total = distill_total + layer_distill_loss(blocks, cells, distill)
    if kl_weight > 0 and layer_columns.shape[0] > 1:
        terms["kl"] = kl_total
        total = total + kl_weight * kl_total
    if distill is not None and num_layers > 1:
        terms["distill"] = distill_total
        total = total + distill_weight * distill_total
    return total, terms


def fixed_pairs_loss(
    base_loss: BaseLoss,
    layer_columns: Tensor,
    labels: Tensor | None,
    pairs: Sequence[tuple[int, int]],
    dims: Sequence[int] = (),
    weights: Sequence[float] | None = None,
    kl_weight: float = 1.0,
    kl_temperature: float = 0.3,
    detach_kl_target: bool = True,
    distill: Distill | None = None,
    distill_weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """2D Matryoshka with a fixed (layer, dim) schedule (Starbucks, Zhuang et al., 2024).

    layer_columns: (L, C, B, D). Every step sums ``base_loss(prefix(layer l, d))`` over the fixed
    ``pairs`` (1-based layers) and, when ``dims`` is given, over the final layer at each of ``dims``
    (the plain Matryoshka loss; a pair that is already in that set is counted once).
    For each pair below the final layer, ``kl_weight * layer_kl`` aligns its ``d``-prefix with
    the first ``d`` values of the final layer. ``weights`` (one per pair) default to 1.
    Returns ``(total, terms)`` with unweighted terms named as in every other mode (one tag
    scheme, so ablation curves overlay): ``"d{d}"`` at the final layer, ``"l{l}_d{d}"`` below
    it; and ``"kl"``.
    ``distill``: every pair below the final layer also learns the final layer's in-batch similarity
    structure at its dim (see `layer_distill_loss`), added as ``distill_weight * "distill"``.
    """
    num_layers = layer_columns.shape[0]
    pairs = [(int(layer), int(d)) for layer, d in pairs]
    weights = [1.0] * len(pairs) if weights is None else list(weights)
    if len(weights) != len(pairs):
        raise ValueError(f"{len(weights)} pair weights for {len(pairs)} (layer, dim) pairs")
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"(layer, dim) pairs must be unique, got {pairs}")
    schedule = dict(zip(pairs, weights))
    for d in dims:
        schedule.setdefault((num_layers, int(d)), 1.0)
    final = layer_columns[-1]
    total = layer_columns.new_zeros((), dtype=torch.promote_types(layer_columns.dtype, torch.float32))
    kl_total = total.new_zeros(())
    terms: dict[str, Tensor] = {}
    for (layer, d), weight in schedule.items():
        if not 1 <= layer <= num_layers:
            raise ValueError(f"layer {layer} of pair ({layer}, {d}) is outside 1..{num_layers}")
        emb = layer_columns[layer - 1]
        term = base_loss(prefix(emb, d), labels)
        terms[f"d{d}" if layer == num_layers else f"l{layer}_d{d}"] = term
        total = total + weight * term
        if kl_weight > 0 and layer < num_layers:
            kl_total = kl_total + layer_kl(final[..., :d], emb[..., :d], kl_temperature, detach_kl_target)
    shallow = [(layer, d) for layer, d in schedule if layer < num_layers]
    if kl_weight > 0 and shallow:
        terms["kl"] = kl_total
        total = total + kl_weight * kl_total
    if distill is not None and shallow:
        terms["distill"] = layer_distill_loss(layer_columns, shallow, distill)
        total = total + distill_weight * terms["distill"]
    return total, terms


# --------------------------------------------------------------------------------------------
# Self-distillation: shallow layers and small prefixes learn the full model's similarity structure
# --------------------------------------------------------------------------------------------

DISTILL_KINDS = ("kl", "mse", "emb")


def similarity_distill(
    student: Tensor, teacher: Tensor, kind: str = "kl", temperature: float = 0.05
) -> Tensor:
    """How far the student's in-batch similarity structure is from the teacher's (teacher detached).

    student: (N, d), teacher: (N, d') embeddings of the same N texts (re-normalised here); only
    ``"emb"`` needs d == d'. With ``S[i, j] = cos(x_i, x_j)`` over the N texts, the diagonal
    (always 1) left out:
    - ``"kl"``: mean over rows i of ``KL(p_i || q_i)``, ``p_i = softmax_{j != i}(S_t[i, j] / T)``
      and ``q_i`` the same for the student: each text ranks the others as the teacher does.
    - ``"mse"``: mean over rows i of ``sum_{j != i} (S_s[i, j] - S_t[i, j]) ** 2``.
    - ``"emb"``: mean over rows of ``||s_i - t_i||^2`` of the unit vectors (``= 2 - 2 cos``): the
      student must land on the teacher's embedding, not only reproduce its similarities.
    The teacher receives no gradient: it is ``teacher.detach()``. Returns a scalar in fp32.
    """
    if kind not in DISTILL_KINDS:
        raise ValueError(f"distillation kind must be one of {DISTILL_KINDS}, got {kind!r}")
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"student has {student.shape[0]} rows, teacher {teacher.shape[0]}")
    s = F.normalize(at_least_fp32(student), dim=-1, eps=1e-12)
    t = F.normalize(at_least_fp32(teacher.detach()), dim=-1, eps=1e-12)
    if kind == "emb":
        if s.shape[-1] != t.shape[-1]:
            raise ValueError(f"'emb' distillation needs equal widths, got {s.shape[-1]} and {t.shape[-1]}")
        return ((s - t) ** 2).sum(-1).mean()
    n = s.shape[0]
    if n < 2:
        raise ValueError("similarity distillation needs at least 2 texts in the batch")
    with no_autocast(s):  # similarities in fp32 under autocast
        sim_s, sim_t = s @ s.T, t @ t.T  # (N, N)
    off = ~torch.eye(n, dtype=torch.bool, device=s.device)
    if kind == "mse":
        return ((sim_s - sim_t) ** 2).masked_fill(~off, 0.0).sum(-1).mean()
    # Drop the diagonal: (N, N-1) rows of the other texts' similarities.
    log_q = F.log_softmax(sim_s[off].view(n, n - 1) / temperature, dim=-1)
    log_p = F.log_softmax(sim_t[off].view(n, n - 1) / temperature, dim=-1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


def layer_distill_loss(layer_columns: Tensor, cells: Sequence[tuple[int, int]], distill: Distill) -> Tensor:
    """Layer self-distillation: ``sum over (l, d) in cells of distill(prefix(layer l, d), prefix(final, d))``.

    layer_columns: (L, C, B, D) or (L, N, D) pooled embeddings of every block (1-based ``l``); the
    C*B texts of a batch are one set of N texts, so the similarity structure is over all of them
    (anchors, positives and negatives alike). The teacher is the final layer at the same dim,
    detached by ``distill``. Cells at the final layer are skipped (they would be their own
    teacher). Returns a scalar (0 when no cell is below the final layer).
    """
    num_layers, width = layer_columns.shape[0], layer_columns.shape[-1]
    flat = layer_columns.reshape(num_layers, -1, width)  # (L, N, D)
    total = flat.new_zeros((), dtype=torch.promote_types(flat.dtype, torch.float32))
    for layer, d in cells:
        if not 1 <= layer <= num_layers:
            raise ValueError(f"layer {layer} is outside 1..{num_layers}")
        if layer < num_layers:
            total = total + distill(flat[layer - 1, :, :d], flat[-1, :, :d].detach())
    return total


def prefix_distill_loss(columns: Tensor, dims: Sequence[int], distill: Distill) -> Tensor:
    """Prefix self-distillation: ``sum over d in dims, d < D, of distill(prefix(E, d), E)``.

    columns: (C, B, D) or (N, D) embeddings of one layer. The teacher is the full width D (the
    model's own full-width similarity structure), detached by ``distill``: small prefixes learn to
    rank texts the way the full embedding does, instead of each prefix fitting the labels on its
    own. ``distill`` must compare similarities (``"kl"`` or ``"mse"``): a prefix cannot equal the
    full embedding. Returns a scalar (0 when every dim is D).
    """
    width = columns.shape[-1]
    flat = columns.reshape(-1, width)  # (N, D)
    total = flat.new_zeros((), dtype=torch.promote_types(flat.dtype, torch.float32))
    for d in dims:
        if d < width:
            total = total + distill(flat[:, :d], flat.detach())
    return total


def with_prefix_distill(
    objective: Callable[[Tensor, Tensor | None], tuple[Tensor, dict[str, Tensor]]],
    columns: Tensor,
    labels: Tensor | None,
    dims: Sequence[int],
    distill: Distill,
    weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``objective(columns, labels)`` plus ``weight * prefix_distill_loss`` of the final layer.

    columns: (C, B, D), or (L, C, B, D) for 2D objectives (the final layer, index -1, is the one
    whose prefixes learn from its full width). Adds the term ``"prefix_distill"``.
    """
    total, terms = objective(columns, labels)
    final = columns[-1] if columns.ndim == 4 else columns
    terms["prefix_distill"] = prefix_distill_loss(final, dims, distill)
    return total + weight * terms["prefix_distill"], terms


def unlabelled_distill_loss(
    emb: Tensor,
    layer_cells: Sequence[tuple[int, int]],
    prefix_dims: Sequence[int],
    layer_distill: Distill | None,
    prefix_distill: Distill | None = None,
    layer_weight: float = 1.0,
    prefix_weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The only loss of a batch of plain sentences (``--distill-data``): the distillation terms.

    emb: (L, N, D) every layer's embeddings of N texts, or (N, D) the final layer only (then
    ``layer_cells`` must be empty). ``layer_weight * layer_distill_loss(cells, layer_distill)`` +
    ``prefix_weight * prefix_distill_loss(final layer, prefix_dims, prefix_distill)``; either part
    is left out when its cells / dims are empty. Returns ``(total, terms)`` with
    ``"unlabelled_distill"`` / ``"unlabelled_prefix_distill"``.
    """
    layers = emb if emb.ndim == 3 else emb[None]
    if layer_cells and emb.ndim != 3:
        raise ValueError("layer distillation on unlabelled text needs every layer: emb of shape (L, N, D)")
    terms: dict[str, Tensor] = {}
    total = layers.new_zeros((), dtype=torch.promote_types(layers.dtype, torch.float32))
    if layer_cells:
        terms["unlabelled_distill"] = layer_distill_loss(layers, layer_cells, layer_distill)
        total = total + layer_weight * terms["unlabelled_distill"]
    if prefix_dims:
        terms["unlabelled_prefix_distill"] = prefix_distill_loss(layers[-1], prefix_dims, prefix_distill)
        total = total + prefix_weight * terms["unlabelled_prefix_distill"]
    return total, terms


# --------------------------------------------------------------------------------------------
# Teacher distillation: a frozen teacher's embeddings of the same texts, at every Matryoshka dim
# --------------------------------------------------------------------------------------------


def embedding_mse(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean squared error between two sets of raw (un-normalised) vectors: the mean over all
    N x d values of ``(s - t) ** 2``, as ``torch.nn.functional.mse_loss`` (upstream's MSELoss).

    student, teacher: (N, d). Neither side is normalised: the student learns the teacher's vectors
    themselves, so where the term is 0 every prefix and its unit vector match too. (Upstream's
    MatryoshkaLoss around MSELoss normalises the student's prefix but compares it with the
    teacher's raw prefix, whose norm is below 1 for a unit-length teacher: a target it cannot
    reach.) The teacher is detached. Returns a scalar in fp32.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student is {tuple(student.shape)}, teacher {tuple(teacher.shape)}")
    with no_autocast(student):
        return F.mse_loss(at_least_fp32(student), at_least_fp32(teacher.detach()))


def teacher_distill_loss(
    student: Tensor,
    teacher: Tensor,
    dims: Sequence[int],
    distill: Distill,
    weights: Sequence[float] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``sum_k w_k * distill(student[:, :d_k], teacher[:, :d_k])``: the student learns a frozen
    teacher at every Matryoshka dim.

    student: (..., N, D) raw embeddings of N texts (e.g. the (C, B, D) columns of a batch);
    teacher: (..., N, D') the teacher's raw embeddings of the same texts, D' >= every dim.
    ``distill`` gets both d-prefixes (un-normalised: `embedding_mse` compares them raw,
    `similarity_distill` normalises each itself). Returns ``(total, {"teacher_d{d}": term})``.
    """
    weights = [1.0] * len(dims) if weights is None else list(weights)
    if len(weights) != len(dims):
        raise ValueError(f"{len(weights)} dim weights for {len(dims)} dims")
    s = student.reshape(-1, student.shape[-1])  # (N, D)
    t = teacher.reshape(-1, teacher.shape[-1])  # (N, D')
    if max(dims) > min(s.shape[-1], t.shape[-1]):
        raise ValueError(
            f"dims {list(dims)} exceed the student's {s.shape[-1]} or the teacher's {t.shape[-1]}"
        )
    terms: dict[str, Tensor] = {}
    total = s.new_zeros((), dtype=torch.promote_types(s.dtype, torch.float32))
    for d, weight in zip(dims, weights):
        terms[f"teacher_d{d}"] = distill(s[:, :d], t[:, :d])
        total = total + weight * terms[f"teacher_d{d}"]
    return total, terms
