"""TrainConfig: the single source of training defaults, its argparse, config files and validation.

The dataclass below is the whole configuration, in the groups of ``--help`` (`GROUPS`), every
field with its help. ``parse_config(argv)`` builds the command line from it; ``--config FILE``
(JSON or TOML, keys are field names) supplies defaults and flags on the command line win. The
loop reads the config and never mutates it.

Every check of a setting against another one lives here, loud and naming the flag:

- `validate(config)`: everything that needs no model, data or processes (`parse_config` runs it);
- `validate_for_run(config, world_size)`: what needs the number of processes (torchrun);
- `validate_for_model(config, model_dim, num_layers, has_head)`: what needs the loaded encoder.
- `validate_for_teacher(config, teacher_dim, model_dim)`: what needs the loaded --teacher.

Checks of data against a setting (a score column, token lengths) stay with the data readers.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import difflib
import functools
import json
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrl import objectives
from mrl.losses import DEPTH_WEIGHTINGS, DIRECTIONS, HARDNESS_MODES, PARTITION_MODES, check_dims
from mrl.packing import PADDING_FREE_MODES
from mrl.pooling import POOLING_MODES
from mrl.runtime import AMP_PRECISIONS, OneLineParser, main_error  # noqa: F401 (main_error: re-exported)

SCHEDULERS = ("linear", "cosine", "constant")
EXIT_HEAD_MODES = ("none", "shallow", "all")

# --adaptor's choices and its loss-weight parser live here, not in mrl/adaptor.py, so that the
# config (the lowest layer) imports no model code; mrl/adaptor.py imports them from here.
ADAPTOR_KINDS = ("linear", "mlp", "rotation")
ADAPTOR_INITS = ("identity", "pca")  # --adaptor-init: where a linear or rotation adaptor starts
ADAPTOR_MODES = ("off", *ADAPTOR_KINDS)  # --adaptor: "off" trains the encoder as usual
LOSS_WEIGHT_NAMES = ("sim", "nbr", "list", "rec", "rank")  # --adaptor-weights NAME=W


def parse_loss_weights(specs: Sequence[str]) -> dict[str, float]:
    """``["sim=1", "nbr=0.5"]`` -> ``{"sim": 1.0, "nbr": 0.5, "list": 0.0, "rec": 0.0, "rank": 0.0}``.

    Names are `LOSS_WEIGHT_NAMES`; a name not given weighs 0. Raises a ValueError naming
    ``--adaptor-weights`` for a bad spec, an unknown name, a repeat or a negative weight.
    """
    weights = dict.fromkeys(LOSS_WEIGHT_NAMES, 0.0)
    seen = set()
    for spec in specs:
        name, sep, value = spec.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not sep or name not in weights or name in seen or not number >= 0:
            raise ValueError(
                f"--adaptor-weights: '{spec}' is not NAME=WEIGHT with NAME one of "
                f"{', '.join(LOSS_WEIGHT_NAMES)} (each once) and WEIGHT >= 0"
            )
        seen.add(name)
        weights[name] = number
    return weights


# The --help groups, in order: (title, what its flags decide). Every TrainConfig field belongs to
# one, and the dataclass lists the fields group by group in this order (tests/test_config.py).
GROUPS = {
    "model": "the encoder that is fine-tuned",
    "data": "what it trains and is evaluated on",
    "objective": "the base loss and the Matryoshka dims (mrl/objectives.py)",
    "2D": "layers x dims (--2d), and a small exit head per depth for the cut models",
    "distillation": "self-distillation (shallow layers / small prefixes learn the full model's "
    "similarities) and a frozen --teacher",
    "adaptor": "Matryoshka-Adaptor: train only a small head on frozen embeddings (mrl/adaptor.py)",
    "optimisation": "steps, batches and AdamW",
    "runtime": "devices, seeds, precision, processes, memory and speed",
    "output": "evaluation, logging, checkpoints and the run directory",
}


def _group(title: str) -> Callable[..., Any]:
    """The field maker of one --help group: ``name: type = _data(default, help, **extra)``."""
    assert title in GROUPS, title

    def make(default: Any, help: Any, **extra: Any) -> Any:
        """A dataclass field carrying its group, its --help text (a string, or a function called
        when the parser is built) and optional choices / flag name."""
        metadata = {"group": title, "help": help, **extra}
        if isinstance(default, list):
            return field(default_factory=lambda: list(default), metadata=metadata)
        return field(default=default, metadata=metadata)

    return make


_model, _data, _objective, _two_d = _group("model"), _group("data"), _group("objective"), _group("2D")
_distill, _adaptor, _optim = _group("distillation"), _group("adaptor"), _group("optimisation")
_runtime, _output = _group("runtime"), _group("output")


def _choices_help(lead: str, table: dict[str, Any], off: str | None = None) -> Callable[[], str]:
    """--help of a flag choosing an entry of an objectives table: each entry's own help and
    citation, read when the parser is built (a fork's new entry describes itself here too);
    ``off``: what the choice "off" (not in the table) means, if it exists."""

    def text() -> str:
        items = [f"off = {off}"] if off else []
        items += [
            f"{name} = {entry.help}" + (f" [{entry.citation}]" if entry.citation else "")
            for name, entry in table.items()
        ]
        return f"{lead}: " + "; ".join(items)

    return text


@dataclass
class TrainConfig:
    # --- model: the encoder that is fine-tuned ------------------------------------------------
    model: str = _model("sentence-transformers/all-MiniLM-L6-v2", "hub id or local folder of an encoder")
    pooling: str = _model("mean", "how token states become one vector", choices=POOLING_MODES)
    max_seq_length: int = _model(128, "longer texts are truncated to this many tokens")
    trust_remote_code: bool = _model(
        False, "run Python code shipped with the model (off: only when you trust it)"
    )

    # --- data: what it trains and is evaluated on ---------------------------------------------
    train_data: str = _data(
        "sentence-transformers/stsb", "training file (.csv/.tsv/.jsonl with a header) or hub dataset id"
    )
    train_subset: str | None = _data(
        None, "hub dataset subset, e.g. 'triplet' for sentence-transformers/all-nli"
    )
    train_split: str = _data("train", "hub dataset split")
    text_columns: list[str] | None = _data(
        None, "text columns in order (anchor, positive, negatives...); default: detected from the header"
    )
    score_column: str | None = _data(None, "score column for CoSENT (default 'score'); ignored by mnrl")
    where: list[str] = _data([], "keep only rows where COLUMN=VALUE, e.g. label=entailment (repeatable)")
    score_range: list[float] | None = _data(
        [0.0, 1.0], "LOW HIGH: a training score outside this range is an error (e.g. 0 5 for raw STS)"
    )
    group_by_length: bool = _data(
        False,
        "batch texts of similar token length together: less padding, but it changes which pairs "
        "share a batch and cost 1-1.5 Spearman out of domain at 64/32 dims (README)",
    )
    max_train_samples: int | None = _data(None, "use only the first N training rows (quick experiments)")
    eval_data: list[str] = _data(
        ["sentence-transformers/stsb@validation"],
        "dev sets for periodic evaluation: files (sentence1,sentence2,score) or HUB_ID@split; none: "
        "give the flag alone. Not given: for a local --train-data the scored-pairs file beside it "
        "with 'train' in its name replaced by 'dev' (stsb/en-train.csv -> stsb/en-dev.csv) or none, "
        "else (default: sentence-transformers/stsb@validation)",
    )

    # --- objective: the base loss and the Matryoshka dims --------------------------------------
    # The choices of --loss, --2d and the distillation flags are the entries of the objectives
    # table (mrl/objectives.py), read when the parser is built, so an objective registered there
    # is a valid choice here, and its help and citation are listed in --help.
    loss: str = _objective(
        "cosent",
        _choices_help("base loss", objectives.BASE_LOSSES),
        choices=lambda: tuple(objectives.BASE_LOSSES),
    )
    scale: float = _objective(20.0, "similarity scale = 1 / temperature")
    dims: list[int] | None = _objective(
        None, "Matryoshka dims, e.g. 384 256 128 64 32; default: the full dim only"
    )
    dim_weights: list[float] | None = _objective(
        None, "one weight per dim (default 1 each; the loss is their sum)"
    )
    n_dims_per_step: int | None = _objective(None, "sample this many of --dims each step (default: all)")
    # In-batch-negative options (issue 25): GTE's directions, and hardness weighting.
    directions: list[str] = _objective(
        list(DIRECTIONS),
        "gte: the similarity blocks in each anchor's softmax: query-doc (always: it holds the "
        "positive), query-query, doc-query, doc-doc (self and same-query pairs masked)",
    )
    partition_mode: str = _objective(
        "joint",
        "gte: one softmax over every direction (joint, GTE), or the mean of one per direction "
        "(per-direction; query-doc and doc-query only)",
        choices=PARTITION_MODES,
    )
    hardness: str = _objective(
        "off",
        "in-batch negatives: add alpha * stopgrad(cos) to the query -> doc logits of in-batch, hard "
        "or all negatives, so harder ones weigh more (Lan et al. 2025)",
        choices=HARDNESS_MODES,
    )
    hardness_strength: float = _objective(0.0, "alpha of --hardness (added to scale * cos, unscaled)")
    gather_across_devices: bool = _objective(
        True, "under torchrun, score each anchor against every GPU's candidates (global in-batch negatives)"
    )

    # --- 2D: layers x dims, and exit heads per depth -------------------------------------------
    two_d: str = _two_d(
        "off",
        _choices_help("2D Matryoshka", objectives.WRAPPERS),
        choices=lambda: tuple(objectives.WRAPPERS),
        flag="--2d",
    )
    n_layers_per_step: int = _two_d(1, "random mode: earlier layers sampled per step (-1: all of them)")
    last_layer_weight: float = _two_d(1.0, "random mode: weight of the final layer's loss")
    prior_layers_weight: float = _two_d(1.0, "random mode: weight of the sampled layers' losses")
    # No argparse choices: a retired name ('linear', 'inverse') gets its own error in validate().
    depth_weighting: str = _two_d(
        "proportional",
        "random mode: weight of a sampled layer of L blocks, idx its hidden-state index (0: the "
        "embedding layer's output, l: block l): 'proportional' = idx/L (ours; candidates blocks "
        "1..L-1); upstream's 'uniform' = 1, 'log' = 1/(1+ln(1+idx)), 'reciprocal' = 1/(1+idx) "
        "(upstream's 'linear') draw among hidden states 0..L-1 and average the drawn ones",
    )
    embedding_candidate: bool = _two_d(
        False,
        "random mode, proportional: add the embedding layer's output (idx 0, weighted as block 1) "
        "to the candidates, as upstream's weightings always do",
    )
    kl_weight: float = _two_d(
        1.0, "weight of the KL term aligning shallow layers with the final one (0: off)"
    )
    kl_temperature: float = _two_d(0.3, "temperature of that KL term")
    detach_kl_target: bool = _two_d(True, "treat the final layer as a fixed KL target (upstream: no)")
    layer_dim_pairs: list[str] | None = _two_d(
        None, "fixed mode: LAYER:DIM pairs, e.g. 2:32 4:64 6:384; default: --dims spread over the layers"
    )
    # Exit heads: a small map per depth for the cut models (mrl/model.py ExitHead).
    exit_heads: str = _two_d(
        "none",
        "give each shallow depth (shallow: 1..L-1; all: 1..L) a residual linear map of its pooled "
        "vector, identity at start, trained with the model: a cut to k blocks maps its states into "
        "the embedding space without bending the blocks the deeper layers share",
        choices=EXIT_HEAD_MODES,
    )
    exit_head_lr: float = _two_d(1e-3, "learning rate of the exit heads (with --lr's warmup and decay)")
    exit_head_detach: bool = _two_d(
        False,
        "the exit heads learn on detached vectors (the same losses once more, with the heads): the "
        "blocks then train exactly as without heads, so the full model pays nothing for them",
    )

    # --- distillation: self-distillation, and a frozen teacher ----------------------------------
    layer_distill: str = _distill(
        "off",
        _choices_help(
            "2D: every trained shallow (layer, dim) cell also learns the final layer's in-batch "
            "similarities at that dim (teacher detached)",
            objectives.DISTILLS,
            off="none",
        ),
        choices=lambda: ("off", *objectives.DISTILLS),
    )
    prefix_distill: str = _distill(
        "off",
        _choices_help(
            "every --dims prefix below the full width also learns the full width's in-batch "
            "similarities (teacher detached)",
            {name: e for name, e in objectives.DISTILLS.items() if e.prefix},
            off="none",
        ),
        choices=lambda: ("off", *(name for name, e in objectives.DISTILLS.items() if e.prefix)),
    )
    distill_weight: float = _distill(1.0, "weight of each distillation term")
    distill_temperature: float = _distill(0.05, "temperature of the row-wise KL distillation")
    distill_data: list[str] = _distill(
        [],
        "files of plain sentences (any reader; every text column) whose only loss is the "
        "distillation terms (self-distillation, --teacher), one extra batch per micro-batch; "
        "never evaluation text",
    )
    distill_exclude: list[str] = _distill(
        [],
        "files whose texts are never distilled on (e.g. STS-B dev/test, SICK, BEIR queries); the "
        "--eval-data sets are always excluded",
    )
    distill_batch_size: int | None = _distill(
        None, "texts per --distill-data batch (default: the texts of one training batch)"
    )
    # A frozen teacher (issue 25): its embeddings of every training and --distill-data text are
    # computed once (cached in --embedding-cache) and the model learns them at every --dims.
    teacher: str | None = _distill(
        None,
        "a frozen teacher (hub id, model folder, or a training run folder: its model/) whose "
        "embeddings the model learns at every --dims on the training texts and --distill-data "
        "(computed once, cached in --embedding-cache); its width must cover --dims. For a k-block "
        "student, save the first k blocks of a model first (README, 'A frozen teacher')",
    )
    teacher_loss: str = _distill(
        "mse",
        _choices_help("--teacher: the term at each dim", objectives.TEACHERS),
        choices=lambda: tuple(objectives.TEACHERS),
    )
    teacher_weight: float = _distill(
        1.0, "--teacher: weight of its term (a sum over --dims, each at its --dim-weights), added to --loss"
    )
    teacher_temperature: float = _distill(0.05, "--teacher-loss kl: temperature of the row-wise KL")

    # --- adaptor: train only a small head on frozen embeddings (mrl/adaptor.py) ---------------
    adaptor: str = _adaptor(
        "off",
        "train only an adaptor f(e) = x + g(x), x = e/|e|, on the frozen encoder's embeddings of the "
        "--train-data corpus (encoded once, cached): 'linear' (saved as a Dense layer), 'mlp', or "
        "'rotation' (f(e) = Q x with Q orthogonal: every full-width cosine kept up to float rounding; "
        "saved as a Dense layer; --weight-decay would pull Q back to its start); "
        "other defaults change with it (see ADAPTOR_DEFAULTS)",
        choices=ADAPTOR_MODES,
    )
    adaptor_embeddings: str | None = _adaptor(
        None, "adaptor: precomputed corpus embeddings (.npy or .safetensors, N x D), e.g. a closed API's"
    )
    adaptor_pairs: str | None = _adaptor(
        None,
        "adaptor: (query, document) pairs for the ranking loss: a BEIR split folder (queries.jsonl, "
        "qrels.tsv; documents from the corpus), a file with two text columns, or with "
        "--adaptor-embeddings a .safetensors holding 'query' and 'document' (P x D)",
    )
    adaptor_hidden: int | None = _adaptor(None, "adaptor mlp: hidden units (default: the embedding dim)")
    adaptor_init: str = _adaptor(
        "identity",
        "adaptor linear or rotation: start at the identity, or at the corpus' uncentred PCA rotation (pca: "
        "full-width cosines unchanged, each prefix starts as PCA's)",
        choices=ADAPTOR_INITS,
    )
    adaptor_weights: list[str] = _adaptor(
        ["list=1", "rank=1"],
        "adaptor loss weights NAME=W: sim (pairwise similarity), nbr (top-k neighbourhood), list "
        "(listwise neighbourhood), rec (reconstruction), rank (in-batch negatives on the pairs, "
        "used only with --adaptor-pairs); an absent name weighs 0; the paper's: sim=1 nbr=1",
    )
    adaptor_k: int = _adaptor(10, "adaptor: neighbours per row in the top-k neighbourhood loss (nbr)")
    adaptor_temperature: float = _adaptor(0.05, "adaptor: temperature of the listwise loss (list)")
    adaptor_neighbours: int = _adaptor(
        0,
        "adaptor: build each batch from B/(1+M) random anchors and each one's M nearest corpus "
        "neighbours (0: B random rows)",
    )
    adaptor_pair_batch_size: int = _adaptor(64, "adaptor: pairs per step for the ranking loss")
    embedding_cache: str | None = _adaptor(
        None,
        "adaptor and --teacher: folder of cached embeddings (default: $MRL_EMBEDDING_CACHE or "
        "~/.cache/mrl/embeddings)",
    )

    # --- optimisation: steps, batches and AdamW ------------------------------------------------
    epochs: int = _optim(1, "passes over the training data (ignored when --max-steps is set)")
    max_steps: int | None = _optim(None, "stop after this many optimizer steps")
    batch_size: int = _optim(16, "texts tuples per micro-batch (in-batch negatives come from this batch)")
    grad_accum: int = _optim(
        1,
        "micro-batches per optimizer step; this does NOT add in-batch negatives (each micro-batch "
        "only sees its own rows)",
    )
    lr: float = _optim(2e-5, "peak learning rate of AdamW")
    weight_decay: float = _optim(0.0, "AdamW weight decay (never on biases and LayerNorm weights)")
    warmup_ratio: float = _optim(0.1, "fraction of the steps with linear warmup from 0")
    scheduler: str = _optim("linear", "learning-rate decay after warmup", choices=SCHEDULERS)
    max_grad_norm: float = _optim(1.0, "clip the global gradient norm to this (0: no clipping)")

    # --- runtime: devices, seeds, precision, processes, memory and speed ------------------------
    precision: str = _runtime("fp32", "autocast precision; fp16 adds a GradScaler", choices=AMP_PRECISIONS)
    device: str = _runtime("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    seed: int = _runtime(12, "seeds data order, dropout and dim/layer sampling")
    dist_timeout: float = _runtime(
        1800.0,
        "under torchrun: seconds to wait for the other processes to start (and for any collective) "
        "before stopping with an error",
    )
    padding_free: str = _runtime(
        "auto",
        "compute no padding, batches unchanged: pack = texts end to end with block-diagonal "
        "attention, buckets = adaptive sub-batches by length, auto = pack where the model allows it",
        choices=PADDING_FREE_MODES,
    )
    mini_batch_size: int | None = _runtime(
        None, "GradCache: encode the batch N texts at a time (memory of N, gradients of the whole batch)"
    )
    mini_batch_tokens: int | None = _runtime(
        None,
        "GradCache: encode at most N padded tokens at a time (texts sorted by length; one long "
        "text cannot blow a mini-batch's memory); combines with --mini-batch-size",
    )
    gradient_checkpointing: bool = _runtime(False, "recompute encoder activations in backward (less memory)")
    compile: bool = _runtime(False, "torch.compile the encoder (dynamic shapes: padded lengths vary)")
    dense_embedding_grad: bool = _runtime(
        False,
        "let autograd allocate the dense (vocab, D) word-embedding gradient every backward, as "
        "before 2026-12-01 (slower on CPU; the same sums bit for bit also with several backwards "
        "per step; see mrl/sparse_grad.py)",
    )

    # --- output: evaluation, logging, checkpoints and the run directory -----------------------
    eval_every: int = _output(
        100, "evaluate on --eval-data every N steps, at step 0 and at the end (0: only those two)"
    )
    eval_batch_size: int = _output(64, "batch size for encoding during evaluation")
    log_every: int = _output(10, "write a log line and scalars every N steps")
    save_every: int = _output(0, "save a resumable checkpoint every N steps (0: only at the end)")
    save_every_minutes: float = _output(
        30.0, "also save one when this many minutes passed since the last (0: off): what a crash can lose"
    )
    keep_last: int = _output(2, "keep this many most recent checkpoints")
    output_dir: str | None = _output(None, "run directory (default: runs/<date>-<time>); never overwritten")
    resume: bool = _output(False, "continue the run in --output-dir from its latest checkpoint")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


MAX_CONFIG_BYTES = 1 << 20
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}

# Fields that may change between a run and its --resume without changing the result.
RESUME_MAY_DIFFER = {
    "resume",
    "output_dir",
    "eval_every",
    "log_every",
    "save_every",
    "save_every_minutes",
    "keep_last",
    "eval_batch_size",
    "device",
    "dist_timeout",
}


@functools.cache
def _type_hints() -> dict[str, Any]:
    """TrainConfig's resolved annotations, once: resolving them per field cost about a fifth of
    the test suite (77 fields x every parse_config)."""
    return typing.get_type_hints(TrainConfig)


def _field_type(f: dataclasses.Field) -> tuple[type, bool, bool]:
    """(element type, is_list, is_optional) of a TrainConfig field annotation."""
    hint = _type_hints()[f.name]
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], True, optional
    return hint, False, optional


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


# Flags retired in issue 24: no recorded experiment needs them (README, "Retired flags"). On the
# command line and in a --config file they stop with this message; a run's saved config.json
# that holds one without effect is read without it (upgrade_run_config).
RETIRED_FLAGS = {
    "length_buckets": "--length-buckets is retired (issue 24): --padding-free buckets picks the "
    "sub-batches of each batch from its lengths, --padding-free off pads it whole; a run trained "
    "with --padding-free off --length-buckets K > 1 resumes with commit 3b9729e",
}


def _retired(message: str) -> type[argparse.Action]:
    class Retired(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            parser.error(message)

    return Retired


def build_parser() -> argparse.ArgumentParser:
    """argparse generated from TrainConfig; every default is None so we can tell what was given."""
    parser = OneLineParser(
        description="Train a Matryoshka (or 2D) sentence embedding model.", argument_default=None
    )
    parser.add_argument("--config", help="JSON or TOML file of defaults (keys are field names); flags win")
    groups = {title: parser.add_argument_group(title, about) for title, about in GROUPS.items()}
    for f in dataclasses.fields(TrainConfig):
        kind, is_list, _ = _field_type(f)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        # Each default stated once: by the help text itself, or appended here (None: nothing to say).
        help_text = f.metadata["help"]
        help_text = help_text() if callable(help_text) else help_text
        if default is not None and "default" not in help_text:
            help_text += f" (default: {default})"
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_text, "default": None}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            if is_list:
                kwargs["nargs"] = "*"
            if "choices" in f.metadata:
                choices = f.metadata["choices"]
                kwargs["choices"] = choices() if callable(choices) else choices
        groups[f.metadata["group"]].add_argument(flag_name(f), **kwargs)
    for name, message in RETIRED_FLAGS.items():  # not in --help; a one-line error saying why
        flag = "--" + name.replace("_", "-")
        parser.add_argument(
            flag, nargs="*", action=_retired(message), default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return parser


def read_config_file(path: str) -> dict[str, Any]:
    """Field values from a JSON or TOML file; unknown keys are an error naming the file and key."""
    file = Path(path)
    if file.is_dir():
        raise ValueError(f"--config {path}: is a folder, not a JSON or TOML file")
    if not file.is_file():
        raise ValueError(f"--config {path}: no such file")
    if file.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"--config {path}: {file.stat().st_size} bytes; a config file is a few KB")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"--config {path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    try:
        if file.suffix == ".toml":
            import tomllib

            values = tomllib.loads(text)
        else:
            values = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ValueError(f"--config {path}: cannot parse: {str(error) or 'nested too deeply'}") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a table/object of field names")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {key.replace("-", "_"): value for key, value in values.items()}
    if "derived" in values:  # a run's config.json: written by train.py, maybe by an older version
        stale = stale_2d_candidates(values)
        if stale:
            raise ValueError(f"--config {path}: {stale}")
        values = upgrade_run_config(values)
    values.pop("derived", None)  # a saved config.json carries derived quantities; they are recomputed
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for key, value in values.items():
        if key in RETIRED_FLAGS:
            raise ValueError(f"--config {path}: key '{key}': {RETIRED_FLAGS[key]}")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"--config {path}: unknown key '{key}'{hint}")
        values[key] = _check_type(fields[key], value, f"--config {path}: key '{key}'")
    return values


def _check_type(f: dataclasses.Field, value: Any, where: str) -> Any:
    """``value`` as the field's type, or a ValueError naming ``where`` (a file's value is not
    parsed by argparse, so "no" must not become True and 2.5 must not become a step count)."""
    kind, is_list, optional = _field_type(f)
    if value is None and optional:
        return None

    def one(item: Any) -> Any:
        if kind is float and isinstance(item, int) and not isinstance(item, bool):
            return float(item)
        if kind is bool and isinstance(item, bool):
            return item
        if kind is not bool and isinstance(item, kind) and not isinstance(item, bool):
            return item
        raise ValueError(f"{where} must be {'a list of ' if is_list else ''}{kind.__name__}, got {value!r}")

    if is_list:
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list of {kind.__name__}, got {value!r}")
        return [one(item) for item in value]
    return one(value)


# Defaults that --adaptor changes (a config file or a flag still wins): an adaptor is one small
# layer on cached vectors, so larger batches (of anchors and their corpus neighbours), a larger
# learning rate and many passes over the corpus; no dev set unless given (precomputed embeddings
# have no encoder to embed one). Chosen on SciFact's train queries in experiment G
# (experiments/2026-11-30_scifact_adaptor): 1,500 steps there, about 19 epochs of 5,183 docs.
ADAPTOR_DEFAULTS: dict[str, Any] = {
    "lr": 3e-3,
    "batch_size": 512,
    "adaptor_neighbours": 7,
    "epochs": 20,
    "warmup_ratio": 0.05,
    "eval_data": [],
}


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """The resolved config: dataclass defaults < --config file < command-line flags; validated.

    With ``--resume`` and no ``--config``, the run's own config.json is the config file.
    """
    args = vars(build_parser().parse_args(argv))
    config_file = args.pop("config")
    saved_run_config = Path(args["output_dir"] or "", "config.json")
    if config_file is None and args["resume"] and args["output_dir"] and saved_run_config.is_file():
        # `--resume --output-dir RUN` alone continues RUN with the config it was started with.
        config_file = str(saved_run_config)
    values = read_config_file(config_file) if config_file else {}
    from_file = set(values)
    given = {key for key, value in args.items() if value is not None}
    values.update({key: args[key] for key in given})
    if values.get("adaptor", "off") != "off":
        # Training a small head on cached vectors wants other defaults than fine-tuning an encoder.
        adaptor_defaults = set(ADAPTOR_DEFAULTS) - set(values)
        values = {**ADAPTOR_DEFAULTS, **values}
    if "eval_data" not in values:  # offline-friendly: a local training file gets a local dev file or none
        values["eval_data"] = default_dev_data(values.get("train_data", TrainConfig.train_data))
    config = TrainConfig(**values)
    try:
        validate(config)
    except ValueError as error:
        # A value that was not on the command line is named as a flag: say where it came from.
        named = [k for k in values if k not in given and flag_name(_FIELDS[k]) in str(error)]
        if any(k in from_file - given for k in named):
            raise ValueError(f"{error} (set in --config {config_file})") from None
        if values.get("adaptor", "off") != "off" and any(k in adaptor_defaults for k in named):
            raise ValueError(f"{error} (the value is --adaptor's default; give the flag)") from None
        raise ValueError(str(error)) from None
    return config


# Depth weightings renamed in issue 12. 'linear' meant l/L (now 'proportional') but is upstream's
# name for 1/(1+idx); 'inverse' was 1/(1+l) with l counted from 1, off by one from upstream's.
RETIRED_DEPTH_WEIGHTINGS = {
    "linear": "'linear' is ambiguous and retired: our l/L is now 'proportional', upstream's 'linear' "
    "1/(1+idx) is 'reciprocal'",
    "inverse": "'inverse' (1/(1+l), l counted from 1: off by one from upstream) is retired; upstream's "
    "1/(1+idx), idx counted from 0, is 'reciprocal'; runs that used 'inverse' need commit 56b7e81",
}


def stale_2d_candidates(values: dict[str, Any]) -> str | None:
    """Why a run's saved config.json cannot be continued or reused as it is, or None.

    Before issue 25, ``--2d random`` with upstream's weightings (uniform, log, reciprocal) drew
    among blocks 1..L-1 and weighed block l by idx = l - 1; now the embedding output is a
    candidate and idx is the hidden-state index. Such a run (its config.json has no
    ``embedding_candidate`` key) would go on with other draws and weights, silently.
    """
    if (
        "embedding_candidate" not in values
        and values.get("two_d") == "random"
        and values.get("depth_weighting") in ("uniform", "log", "reciprocal")
    ):
        return (
            f"the run trained --depth-weighting {values['depth_weighting']} with the candidates of before "
            "issue 25 (blocks 1..L-1, no embedding output); it cannot continue under today's: resume "
            "it with commit c6d797d, or start a new run"
        )
    return None


def upgrade_run_config(values: dict[str, Any]) -> dict[str, Any]:
    """A run's saved config.json in today's names, with the same meaning.

    A run written before issue 12 stores ``depth_weighting: "linear"`` (every run: it was the
    default), which meant exactly today's "proportional" (l/L, summed over the sampled blocks):
    renamed here, so those runs resume and serve as --config unchanged. "inverse" has no
    equivalent today and is left for `validate` to reject loudly.

    A run written before 2026-12-01 has no ``dense_embedding_grad``: it trained with autograd's
    dense embedding gradient, so it resumes (and serves as --config) on that path, whose sums
    match its own to the last bit also with several backwards per step (mrl/sparse_grad.py).

    A run written before issue 24 holds ``length_buckets`` (retired): 1 (the default, every
    recorded run) or any value with a ``padding_free`` other than "off" did nothing and is dropped;
    K > 1 with "off" is left for `read_config_file` to refuse with RETIRED_FLAGS' message.
    """
    if values.get("depth_weighting") == "linear":
        values = {**values, "depth_weighting": "proportional"}
    if "dense_embedding_grad" not in values:
        values = {**values, "dense_embedding_grad": True}
    if "length_buckets" in values and (
        values["length_buckets"] == 1 or values.get("padding_free", "off") != "off"
    ):
        values = {key: value for key, value in values.items() if key != "length_buckets"}
    return values


def default_dev_data(train_data: str) -> list[str]:
    """--eval-data when it is not given, chosen so that a local run needs no network.

    A hub --train-data keeps the hub default (STS-B validation). A local file gets the file beside
    it named like it with "train" replaced by "dev" or "validation" (stsb/en-train.csv ->
    stsb/en-dev.csv) when that file exists and its header has a "score" column; otherwise none,
    and training runs without periodic evaluation (the resolved value is in config.json).
    """
    path = Path(train_data)
    if path.suffix.lower() not in (".csv", ".tsv", ".jsonl", ".json") and not path.is_file():
        return list(TrainConfig.__dataclass_fields__["eval_data"].default_factory())
    stem, found, tail = path.name.rpartition("train")
    for word in ("dev", "validation") if found else ():
        candidate = path.with_name(stem + word + tail)
        try:
            with open(candidate, encoding="utf-8-sig") as f:
                first = f.readline()
        except (OSError, UnicodeDecodeError):
            continue
        if candidate.suffix.lower() in (".jsonl", ".json"):
            try:
                header = list(json.loads(first))
            except ValueError:
                continue
        else:
            header = next(
                csv.reader([first], delimiter="\t" if candidate.suffix.lower() == ".tsv" else ","), []
            )
        if "score" in [name.strip() for name in header]:
            return [str(candidate)]
    return []


# ============================================================================================
# Validation: every check of one setting against another, in one place
# ============================================================================================


def validate(config: TrainConfig) -> None:
    """Checks that need no model, data or processes; each error names the flag."""

    def fail(message: str) -> None:
        raise ValueError(message)

    if config.depth_weighting in RETIRED_DEPTH_WEIGHTINGS:
        fail(f"--depth-weighting {RETIRED_DEPTH_WEIGHTINGS[config.depth_weighting]}")
    if config.depth_weighting not in DEPTH_WEIGHTINGS:
        fail(
            f"--depth-weighting must be one of {', '.join(DEPTH_WEIGHTINGS)}, got '{config.depth_weighting}'"
        )
    # Names, dims, what the base loss needs, the wrapper's own flags: the objectives table.
    validate_objective(config)
    if config.text_columns is not None and not config.text_columns:  # the reader would say text_columns
        fail("--text-columns: no column given; name the text columns, or leave the flag out to detect them")
    if config.text_columns and len(set(config.text_columns)) != len(config.text_columns):
        twice = sorted({c for c in config.text_columns if config.text_columns.count(c) > 1})
        fail(
            f"--text-columns {' '.join(config.text_columns)}: {', '.join(twice)} given twice "
            "(every pair would be a text and itself)"
        )
    if config.dim_weights is not None:
        n_dims = len(config.dims) if config.dims else 1
        if len(config.dim_weights) != n_dims:
            fail(f"--dim-weights has {len(config.dim_weights)} values for {n_dims} dims")
    if config.n_dims_per_step is not None and config.n_dims_per_step < 1:
        fail("--n-dims-per-step must be at least 1")
    for name in (
        "batch_size",
        "grad_accum",
        "epochs",
        "max_seq_length",
        "eval_batch_size",
        "log_every",
    ):
        if getattr(config, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    for name in ("eval_every", "save_every", "save_every_minutes", "weight_decay", "max_grad_norm"):
        if getattr(config, name) < 0:
            fail(f"--{name.replace('_', '-')} must not be negative")
    if config.keep_last < 1:
        fail("--keep-last must be at least 1")
    if config.max_steps is not None and config.max_steps < 1:
        fail("--max-steps must be at least 1")
    if config.lr <= 0:
        fail("--lr must be positive")
    if not 0 <= config.warmup_ratio < 1:
        fail("--warmup-ratio must be in [0, 1)")
    if config.mini_batch_size is not None and config.mini_batch_size < 1:
        fail("--mini-batch-size must be at least 1")
    if config.mini_batch_tokens is not None and config.mini_batch_tokens < 1:
        fail("--mini-batch-tokens must be at least 1")
    if config.kl_temperature <= 0:
        fail("--kl-temperature must be positive")
    if config.output_dir is not None and not config.output_dir.strip():  # '' is not "not given"
        fail(
            f"--output-dir {config.output_dir!r}: an empty path; give a folder, "
            "or leave the flag out for runs/<date>-<time>"
        )
    if config.resume and not config.output_dir:
        fail("--resume needs --output-dir (the run to continue)")
    if config.score_range is not None and (
        len(config.score_range) != 2 or not config.score_range[0] < config.score_range[1]
    ):
        fail(f"--score-range needs LOW HIGH with LOW < HIGH, got {config.score_range}")
    for spec in config.where:
        if "=" not in spec:
            fail(f"--where '{spec}' is not COLUMN=VALUE")
    if config.exit_head_detach and config.exit_heads == "none":
        fail("--exit-head-detach needs --exit-heads shallow|all")
    if config.exit_heads == "shallow" and config.two_d == "off":
        fail(
            "--exit-heads shallow: without --2d no loss reaches the shallow depths, so their heads "
            "would never train (--exit-heads all gives the last depth one too)"
        )
    validate_adaptor(config)
    check_numbers(config)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def validate_objective(config: TrainConfig) -> None:
    """The objective's settings, from what the table's entries say about themselves (raise
    ValueError naming the flag): known names, dims, a batch with negatives for in-batch-negative
    losses, each wrapper's own checks, distillation, and no flag that no chosen entry reads."""
    base, wrapper = objectives.base_loss_entry(config.loss), objectives.wrapper_entry(config.two_d)
    if config.dims is not None:
        check_dims(config.dims, flag="--dims")
    if base.in_batch_negatives and config.batch_size < 2:
        raise ValueError("--batch-size 1 leaves in-batch negatives with no negatives; use at least 2")
    base.validate(config)  # its own checks, e.g. gte: known directions
    wrapper.validate(config)  # its own checks, e.g. fixed: no repeated pairs
    check_fields_read(config, "--2d", objectives.WRAPPERS, {config.two_d})
    check_distillation(config)
    distills = {config.layer_distill, config.prefix_distill}
    check_fields_read(config, "--layer-distill or --prefix-distill", objectives.DISTILLS, distills)
    check_teacher(config)
    check_fields_read(config, "--loss", objectives.BASE_LOSSES, {config.loss})


def check_fields_read(config: TrainConfig, flag: str, table: dict[str, Any], chosen: set[str]) -> None:
    """A field that some entries of ``table`` read (their ``fields``) but none of the ``chosen``
    does must keep its default: e.g. ``--n-layers-per-step 2`` with ``--2d off`` would be silently
    ignored, so it stops, naming the entries that read it ("needs --2d random")."""
    readers: dict[str, list[str]] = {}
    for name, entry in table.items():
        for key in entry.fields:
            if key not in _FIELDS:  # a fork's entry naming a field TrainConfig lacks
                raise ValueError(f"{flag} {name}: its table entry reads '{key}', which is not a config field")
            readers.setdefault(key, []).append(name)
    for key, names in readers.items():
        f = _FIELDS[key]
        if not chosen.intersection(names) and getattr(config, key) != _default(f):
            raise ValueError(f"{flag_name(f)} needs {flag} {'|'.join(names)}")


def check_distillation(config: TrainConfig) -> None:
    """--layer-distill and --prefix-distill against the wrapper and the table, --distill-data
    against them and GradCache, and the distillation numbers."""
    if config.layer_distill != "off":
        objectives.distill_entry(config.layer_distill, "--layer-distill")
        if not objectives.wrapper_entry(config.two_d).all_layers:
            raise ValueError(
                "--layer-distill needs a 2D wrapper (--2d random or fixed): it trains shallow layers"
            )
    if (
        config.prefix_distill != "off"
        and not objectives.distill_entry(config.prefix_distill, "--prefix-distill").prefix
    ):
        raise ValueError(f"--prefix-distill {config.prefix_distill}: a prefix cannot learn it; use kl or mse")
    teaches = config.layer_distill != "off" or config.prefix_distill != "off" or config.teacher is not None
    if config.distill_data and not teaches:
        raise ValueError(
            "--distill-data needs --layer-distill, --prefix-distill or --teacher (its only loss is "
            "distillation)"
        )
    if config.distill_data and config.mini_batch_size:
        raise ValueError("--distill-data does not combine with --mini-batch-size (GradCache) yet")
    if config.distill_temperature <= 0:
        raise ValueError("--distill-temperature must be positive")
    if config.distill_batch_size is not None and config.distill_batch_size < 2:
        raise ValueError("--distill-batch-size must be at least 2 (a similarity structure needs 2 texts)")


def check_teacher(config: TrainConfig) -> None:
    """--teacher's flags: used only with it, and what it does not combine with (yet)."""
    if config.teacher is None:
        given = [
            flag_name(f)
            for f in dataclasses.fields(TrainConfig)
            if f.name.startswith("teacher_") and getattr(config, f.name) != _default(f)
        ]
        if given:
            raise ValueError(f"{', '.join(given)} only apply with --teacher MODEL")
        return
    if not config.teacher.strip():
        raise ValueError("--teacher '': give a hub id, a model folder or a run folder")
    objectives.teacher_entry(config.teacher_loss)
    check_fields_read(config, "--teacher-loss", objectives.TEACHERS, {config.teacher_loss})
    if config.n_dims_per_step is not None:  # its term is at every dim; which to sample is open
        raise ValueError(
            "--n-dims-per-step does not combine with --teacher yet (its term is at every --dims)"
        )


def validate_adaptor(config: TrainConfig) -> None:
    """The --adaptor flags: used only with --adaptor, and sane (each error names the flag)."""
    if config.adaptor == "off":
        given = [
            flag_name(f)
            for f in dataclasses.fields(TrainConfig)
            if f.name.startswith("adaptor_") and getattr(config, f.name) != _default(f)
        ]
        if given:
            raise ValueError(f"{', '.join(given)} only apply with --adaptor linear|mlp|rotation")
        return
    weights = parse_loss_weights(config.adaptor_weights)
    if not any(weights.values()):
        raise ValueError("--adaptor-weights: every loss weighs 0; nothing would be trained")
    if config.adaptor_init != "identity" and config.adaptor not in ("linear", "rotation"):
        raise ValueError(f"--adaptor-init {config.adaptor_init} needs --adaptor linear or rotation")
    if config.adaptor_hidden is not None and (config.adaptor != "mlp" or config.adaptor_hidden < 1):
        raise ValueError("--adaptor-hidden needs --adaptor mlp and a positive number of units")
    for name in ("adaptor_k", "adaptor_pair_batch_size"):
        if getattr(config, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if config.adaptor_temperature <= 0:
        raise ValueError("--adaptor-temperature must be positive")
    if config.adaptor_neighbours < 0 or config.adaptor_neighbours >= config.batch_size:
        raise ValueError("--adaptor-neighbours must be in 0..--batch-size - 1")
    if config.batch_size < 2:
        raise ValueError("--batch-size: the adaptor's similarity losses need at least 2 rows a step")
    if config.adaptor_pairs is None and not any(w for name, w in weights.items() if name != "rank"):
        raise ValueError("--adaptor-weights: only 'rank' weighs, but no --adaptor-pairs are given")
    unsupported = {
        "--2d": config.two_d != "off",
        "--grad-accum": config.grad_accum != 1,
        "--mini-batch-size": config.mini_batch_size is not None,
        "--n-dims-per-step": config.n_dims_per_step is not None,
        "--compile": config.compile,
        "--precision": config.precision != "fp32",
        "--exit-heads": config.exit_heads != "none",
        "--teacher": config.teacher is not None,
    }
    bad = [flag for flag, used in unsupported.items() if used]
    if bad:
        raise ValueError(f"{', '.join(bad)}: not used by --adaptor (it trains in fp32 on cached vectors)")
    if config.adaptor_embeddings and config.eval_data:  # a dev set is embedded by the encoder
        raise ValueError("--eval-data needs an encoder; with --adaptor-embeddings give --eval-data (none)")


def check_numbers(config: TrainConfig) -> None:
    """Every float setting is finite and in its range, and the combinations can work, before
    anything is created: a bad value must never surface later as a "non-finite loss" next to
    the texts of an innocent batch. Each error names the flag and the value."""

    def number(name: str, value: float, low: float, strict: bool = False, high: float | None = None) -> None:
        flag = "--" + name.replace("_", "-")
        if not math.isfinite(value):
            raise ValueError(f"{flag} {value}: must be a finite number")
        if value < low or (strict and value == low) or (high is not None and value > high):
            bound = f"{'>' if strict else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")
            raise ValueError(f"{flag} {value:g}: must be {bound}")

    # AdamW moves every weight by about lr a step: beyond 1 no model survives its first steps.
    number("lr", config.lr, 0.0, strict=True, high=1.0)
    # A temperature outside [1e-4, 1e4] makes the softmax one-hot or uniform, so nothing learns
    # (measured on the tiny model: scale 1e-30 gives a zero gradient; scale 1e30 a gradient norm
    # that overflows float32, so clipping zeroes it; temperature 1e-44 a NaN loss). Usual: 20-100.
    number("scale", config.scale, 1e-4, high=1e4)
    number("weight_decay", config.weight_decay, 0.0)
    number("max_grad_norm", config.max_grad_norm, 0.0)
    # Loss weights beyond 1e6 act as a learning-rate change of that size and overflow fp16.
    number("kl_weight", config.kl_weight, 0.0, high=1e6)
    number("kl_temperature", config.kl_temperature, 1e-4, high=1e4)
    number("last_layer_weight", config.last_layer_weight, 0.0, high=1e6)
    number("prior_layers_weight", config.prior_layers_weight, 0.0, high=1e6)
    number("warmup_ratio", config.warmup_ratio, 0.0)
    number("distill_weight", config.distill_weight, 0.0, high=1e6)
    number("distill_temperature", config.distill_temperature, 1e-4, high=1e4)
    number("teacher_weight", config.teacher_weight, 0.0, high=1e6)
    number("teacher_temperature", config.teacher_temperature, 1e-4, high=1e4)
    number("adaptor_temperature", config.adaptor_temperature, 1e-4, high=1e4)
    number("dist_timeout", config.dist_timeout, 0.0, strict=True)
    number("exit_head_lr", config.exit_head_lr, 0.0, strict=True, high=1.0)
    if config.lr * config.weight_decay >= 1:
        raise ValueError(
            f"--weight-decay {config.weight_decay:g} with --lr {config.lr:g}: AdamW multiplies every "
            f"weight by 1 - lr x weight_decay = {1 - config.lr * config.weight_decay:g} each step "
            "(must stay above 0)"
        )
    if config.dim_weights is not None:
        bad = [w for w in config.dim_weights if not (math.isfinite(w) and 0 <= w <= 1e6)]
        if bad:
            raise ValueError(f"--dim-weights {config.dim_weights}: each must be a finite number in [0, 1e6]")
        if sum(config.dim_weights) == 0:
            raise ValueError("--dim-weights are all 0: the loss would be 0 and nothing would train")
    if config.two_d == "random" and config.last_layer_weight == 0 and config.prior_layers_weight == 0:
        raise ValueError("--last-layer-weight and --prior-layers-weight are both 0: nothing would train")
    if config.score_range is not None and any(math.isnan(v) for v in config.score_range):
        raise ValueError(f"--score-range {config.score_range}: NaN is not a bound")
    if config.max_train_samples is not None and config.max_train_samples < 1:
        raise ValueError(f"--max-train-samples {config.max_train_samples}: must be at least 1")
    if not 0 <= config.seed < 2**63:
        raise ValueError(f"--seed {config.seed}: must be in [0, 2**63)")
    n_dims = len(config.dims) if config.dims else 1
    if config.n_dims_per_step is not None and config.n_dims_per_step > n_dims:
        raise ValueError(f"--n-dims-per-step {config.n_dims_per_step}: there are only {n_dims} dims")


def validate_for_run(config: TrainConfig, world_size: int) -> None:
    """Checks against the number of processes (``world_size`` > 1 under torchrun)."""
    if world_size <= 1:
        return
    if config.exit_head_detach:  # its second loss runs outside DDP's forward
        raise ValueError(
            "--exit-head-detach runs in one process for now (under torchrun, leave it out: joint heads)"
        )
    if config.adaptor != "off":
        raise ValueError("--adaptor trains in one process (a few MB of cached vectors); run it with python")
    if config.distill_data:
        raise ValueError("--distill-data runs in one process for now (torchrun: leave it out)")
    if config.teacher is not None:
        raise ValueError("--teacher runs in one process for now (torchrun: leave it out)")


def validate_for_model(config: TrainConfig, model_dim: int, num_layers: int, has_head: bool = False) -> None:
    """Checks against the loaded encoder: its embedding dim, its number of blocks (the dims and
    the wrapper's layers must exist in it), and whether it has a head after pooling."""
    check_dims(config.dims or [model_dim], model_dim, flag="--dims")
    wrapper = objectives.wrapper_entry(config.two_d)
    if wrapper.all_layers and num_layers < 2:
        raise ValueError(f"--2d {config.two_d} needs a model with at least 2 layers")
    wrapper.validate_for_model(config, model_dim, num_layers)
    if config.exit_head_detach and has_head:
        raise ValueError(
            f"--exit-head-detach: {config.model} has a head after pooling; train its exit heads jointly"
        )


def validate_for_teacher(config: TrainConfig, teacher_dim: int, model_dim: int) -> None:
    """--teacher against its loaded model: its width must cover every --dims (the student's full
    width when --dims is not given), since each term compares d-prefixes of both."""
    dims = config.dims or [model_dim]
    if max(dims) > teacher_dim:
        given = "--dims" if config.dims else f"--dims (not given: the model's full {model_dim})"
        too_wide = " ".join(str(d) for d in dims if d > teacher_dim)
        raise ValueError(
            f"--teacher {config.teacher} gives {teacher_dim}-dim embeddings: it cannot teach {given} "
            f"{too_wide}; give --dims of at most {teacher_dim}"
        )


def config_diff(saved: dict[str, Any], current: TrainConfig) -> list[str]:
    """Keys whose values differ between a saved run config and this one (ignoring harmless keys)."""
    saved = upgrade_run_config(saved)
    now = current.to_dict()
    return sorted(key for key in now if key not in RESUME_MAY_DIFFER and saved.get(key, now[key]) != now[key])
