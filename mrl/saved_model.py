"""The saved-model layout: reading and writing a model folder that three libraries load.

A saved model (`Encoder.save`) is one folder holding
- the `transformers` files: config.json, model.safetensors, tokenizer files (`AutoModel`,
  `AutoTokenizer`; `load_transformer` reads them);
- the small JSON files the sentence-transformers library reads: modules.json (transformer at "",
  pooling at "1_Pooling", then the head's modules, see `mrl.heads`), 1_Pooling/config.json (the
  pooling's flag, see `mrl.pooling`), sentence_bert_config.json, config_sentence_transformers.json;
- our own ``mrl_config.json`` (`METADATA_FILE`: the trained dims, layers, pooling, the recipe)
  and ``exit_heads.safetensors`` (`EXIT_HEADS_FILE`: the exit heads of the depths below the
  last; the last depth's is written as the first Dense module, where every library applies it).

Files next to the weights are read from a local folder or, for a hub id, through the HF cache
(`side_path`). `resolve_model_path` turns what a user typed (a model folder, a run folder, a hub
id) into what to load.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mrl.blocks import truncated_blocks
from mrl.heads import Dense, ExitHead, load_head, save_head
from mrl.hub import offline_error, offline_reason
from mrl.pooling import st_pooling_flags

if TYPE_CHECKING:
    from mrl.model import Encoder

METADATA_FILE = "mrl_config.json"
EXIT_HEADS_FILE = "exit_heads.safetensors"


# --------------------------------------------------------------------------------------------
# Finding a model and the files beside its weights
# --------------------------------------------------------------------------------------------


def resolve_model_path(name: str) -> str:
    """``name`` checked as a local model folder when it looks like a path: a missing path, a
    file, or a folder without config.json raise FileNotFoundError (one line). A training run
    folder (checkpoints/, run.json) stands for its final model ``RUN/model``; one without a
    final model yet is refused with what to do. Hub ids pass through unchanged."""
    path = Path(name)
    if _looks_like_path(name) and not path.exists():
        raise FileNotFoundError(f"model folder {name} does not exist")
    if path.exists() and not path.is_dir():
        raise FileNotFoundError(f"{name} is a file, not a model folder (a folder with config.json)")
    if path.is_dir() and ((path / "checkpoints").is_dir() or (path / "run.json").is_file()):
        if (path / "model" / "config.json").is_file():
            return str(path / "model")
        raise FileNotFoundError(
            f"{name} is a training run without a final model yet (no {path / 'model'}); "
            f"finish it with: python train.py --output-dir {name} --resume"
        )
    if path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{name} has no config.json: not a transformers model folder")
    return name


def _looks_like_path(name: str) -> bool:
    """A local path rather than a hub id ("org/name"): absolute, ./relative, ~, 3+ parts, or a
    name whose parent folder exists here (``runs/model`` when ``runs/`` exists)."""
    parent = Path(name).parent
    return (
        name.startswith(("/", ".", "~")) or name.count("/") > 1 or (parent != Path(".") and parent.is_dir())
    )


def side_path(name_or_path: str, filename: str) -> Path | None:
    """A file stored next to the weights (local folder, or hub repo via the HF cache), or None."""
    local = Path(name_or_path)
    if local.is_dir():
        path = local / filename
        return path if path.is_file() else None
    from transformers.utils import cached_file

    try:
        path = cached_file(
            name_or_path,
            filename,
            local_files_only=offline_reason() is not None,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except OSError:
        return None
    return Path(path) if path else None


def read_side_file(name_or_path: str, filename: str) -> dict[str, Any] | None:
    """A JSON file stored next to the weights (local folder or hub repo), or None if absent."""
    path = side_path(name_or_path, filename)
    return json.loads(path.read_text(encoding="utf-8")) if path else None


# --------------------------------------------------------------------------------------------
# Reading: the transformer, the head after pooling, the exit heads
# --------------------------------------------------------------------------------------------


def load_transformer(
    name_or_path: str, trust_remote_code: bool = False, model_kwargs: dict[str, Any] | None = None
) -> tuple[nn.Module, Any]:
    """``(AutoModel, AutoTokenizer)`` of a model folder or hub id, with one-line errors.

    ``trust_remote_code`` stays off unless asked: it runs Python code shipped with the weights.
    """
    from transformers import AutoModel

    if Path(name_or_path).is_dir():  # before the weights: a folder that cannot read text is refused
        check_tokenizer_files(Path(name_or_path))
    # A hub id while the hub is out of reach: the cache only, and one line at once if it is
    # not there (instead of half a minute of retries; see mrl/hub.py).
    offline = None if Path(name_or_path).is_dir() else offline_reason()
    hub = {"local_files_only": True} if offline else {}
    try:
        model = AutoModel.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code, **hub, **(model_kwargs or {})
        )
        tokenizer = _load_tokenizer(name_or_path, trust_remote_code, hub)
    except pickle.UnpicklingError as error:
        # transformers loads .bin weights with torch.load(weights_only=True), which refuses a
        # pickle that would call a function; say so in one line instead of torch's essay.
        found = re.search(r"GLOBAL (\S+)", str(error))
        what = f" (it calls {found.group(1)})" if found else ""
        raise ValueError(
            f"{name_or_path}: its weights are a pickle that would run code when loaded{what}; refused "
            "(load only safetensors, or pickles of plain tensors)"
        ) from None
    except OSError:
        if offline:
            raise OSError(offline_error(name_or_path, "model folder", offline)) from None
        raise
    except ValueError:
        raise
    except Exception as error:  # e.g. SafetensorError for a truncated model.safetensors
        reason = (str(error).strip().splitlines() or [""])[0][:300]
        what = f"{type(error).__name__}: {reason}"
        raise ValueError(f"{name_or_path}: cannot load the model ({what})") from None
    return model, tokenizer


# The files a tokenizer's vocabulary lives in (WordPiece, BPE, SentencePiece, fast tokenizers).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")  # fmt: skip


def check_tokenizer_files(folder: Path) -> None:
    """A local model folder must hold its tokenizer's vocabulary: without one, transformers
    builds a tokenizer of the special tokens alone and every word becomes [UNK] (the model
    would train and evaluate on nothing). FileNotFoundError, one line naming what is missing."""
    if any((folder / name).is_file() for name in TOKENIZER_FILES) or any(folder.glob("*.model")):
        return
    raise FileNotFoundError(
        f"{folder} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}): its text would all be "
        "[UNK]; copy them from the model it was made from"
    )


def _load_tokenizer(name_or_path: str, trust_remote_code: bool, hub: dict[str, Any]):
    """AutoTokenizer with one-line errors naming the folder: a truncated or garbled tokenizer file
    (a JSONDecodeError otherwise names no file), or a vocabulary of special tokens only."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **hub)
    except (OSError, pickle.UnpicklingError):
        raise
    except Exception as error:
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        files = [n for n in (*TOKENIZER_FILES, "tokenizer_config.json", "special_tokens_map.json")
                 if (Path(name_or_path) / n).is_file()]  # fmt: skip
        where = f" ({', '.join(files)})" if files else ""
        raise ValueError(
            f"{name_or_path}: cannot read its tokenizer files{where} ({type(error).__name__}: {reason}); "
            "a truncated copy? copy them again"
        ) from None
    special = set(tokenizer.all_special_ids)
    if len(tokenizer) <= len(special):
        raise ValueError(
            f"{name_or_path}: its tokenizer has no vocabulary beyond its {len(special)} special tokens "
            "(every word would be [UNK]); its tokenizer files are missing or empty"
        )
    return tokenizer


def load_model_head(name_or_path: str) -> nn.Sequential | None:
    """The modules after pooling listed in the folder's modules.json (`mrl.heads.load_head`)."""
    entries = read_side_file(name_or_path, "modules.json")
    if not entries:
        return None
    if Path(name_or_path).is_dir():
        return load_head(name_or_path, entries)
    # A hub repo: fetch each head module's files into the HF cache, then load from there.
    folder = None
    for entry in entries:
        for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
            path = side_path(name_or_path, f"{entry['path']}/{name}") if entry["path"] else None
            if path is not None:
                folder = path.parents[1]  # the snapshot folder holding every module folder
    return load_head(folder or name_or_path, entries)


def load_exit_heads(name_or_path: str) -> nn.ModuleDict | None:
    """The exit heads stored beside the weights (``exit_heads.safetensors``, keys
    ``"{depth}.linear.weight"``...), as a ModuleDict keyed by the depth as a string, or None."""
    path = side_path(name_or_path, EXIT_HEADS_FILE)
    if path is None:
        return None
    heads = nn.ModuleDict()
    try:
        tensors = load_file(str(path))
        for depth in sorted({key.split(".", 1)[0] for key in tensors}, key=int):
            weight = tensors[f"{depth}.linear.weight"]
            head = ExitHead(weight.shape[0])
            head.load_state_dict({"linear.weight": weight, "linear.bias": tensors[f"{depth}.linear.bias"]})
            heads[depth] = head
    except Exception as error:  # a truncated file, a key that is not "{depth}.linear.weight|bias"...
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"{path}: not a readable exit-heads file ({type(error).__name__}: {reason})"
        ) from None
    return heads or None


def split_last_exit_head(
    name_or_path: str, head: nn.Sequential | None, exit_heads: nn.ModuleDict | None, num_layers: int
) -> tuple[nn.Sequential | None, nn.ModuleDict]:
    """``(head, exit_heads)`` of a model whose `METADATA_FILE` says ``exit_head_last_depth``.

    `save_model` wrote the last depth's exit head as the first Dense module (for other
    libraries); here it is that depth's head again (key ``str(num_layers)`` of ``exit_heads``,
    created if None), so shallower cuts skip it. ``head`` loses that module (None if it was all).
    """
    dense, *rest = list(head or [None])
    if not isinstance(getattr(dense, "linear", None), nn.Linear) or dense.in_features != dense.out_features:
        raise ValueError(
            f"{name_or_path}: {METADATA_FILE} says the first module after pooling is the last "
            "layer's exit head, but modules.json has no square Dense module there"
        )
    exit_heads = exit_heads if exit_heads is not None else nn.ModuleDict()
    exit_heads[str(num_layers)] = ExitHead.from_dense(dense.linear.weight, dense.linear.bias)
    return (nn.Sequential(*rest) if rest else None), exit_heads


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def save_model(encoder: Encoder, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> None:
    """Write a folder that `AutoModel` and the sentence-transformers library both load.

    HF files (config.json, model.safetensors, tokenizer files), the sentence-transformers
    module layout (transformer at "", pooling at "1_Pooling", then the head's modules if any;
    no final Normalize module, so that ``truncate_dim`` there slices the raw vector and the
    cosine re-normalises it), and our ``mrl_config.json`` with ``metadata`` (trained dims,
    layers, the adaptor's recipe...).
    """
    import transformers

    import mrl

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    encoder.model.save_pretrained(path, safe_serialization=True)
    encoder.tokenizer.save_pretrained(path)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    # Exit heads of the shallow depths go to their own file; the last depth's head (a cut
    # model's, or one trained at full depth) is this model's own output map, so it is written
    # as a Dense module, first after pooling, where every library applies it.
    exit_heads = dict(encoder.exit_heads.items()) if encoder.exit_heads else {}
    shallow = {k: h for k, h in exit_heads.items() if int(k) < encoder.num_layers}
    final = exit_heads.get(str(encoder.num_layers))
    head = ([Dense.from_weights(*final.dense_weights())] if final is not None else []) + list(
        encoder.head or []
    )
    if head:
        modules += save_head(path, head, first_index=2)
    if shallow:
        state = {
            f"{k}.{name}": t.detach().contiguous().cpu()
            for k, h in shallow.items()
            for name, t in h.state_dict().items()
        }
        save_file(state, str(path / EXIT_HEADS_FILE))
    elif (path / EXIT_HEADS_FILE).exists():
        (path / EXIT_HEADS_FILE).unlink()
    pooling_config = {
        "word_embedding_dimension": int(encoder.model.config.hidden_size),
        **st_pooling_flags(encoder.pooling),  # this pooling's flag true, the others false
        "include_prompt": True,
    }
    st_config = {"max_seq_length": encoder.max_seq_length, "do_lower_case": encoder.do_lower_case}
    versions = {
        "mrl": mrl.__version__,
        "transformers": transformers.__version__,
        "pytorch": torch.__version__,
    }
    st_meta = {
        "__version__": versions,
        "prompts": {},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }
    ours = {
        **encoder.metadata,
        **(metadata or {}),
        "pooling": encoder.pooling,
        "max_seq_length": encoder.max_seq_length,
        "dim": encoder.dim,
        "num_layers": encoder.num_layers,
    }
    if shallow:
        ours["exit_heads"] = sorted(int(k) for k in shallow)
    else:
        ours.pop("exit_heads", None)
    if final is not None:  # the first Dense of modules.json is the last depth's exit head
        ours["exit_head_last_depth"] = True
    else:
        ours.pop("exit_head_last_depth", None)
    (path / "1_Pooling").mkdir(exist_ok=True)
    for name, content in [
        ("modules.json", modules),
        ("1_Pooling/config.json", pooling_config),
        ("sentence_bert_config.json", st_config),
        ("config_sentence_transformers.json", st_meta),
        (METADATA_FILE, ours),
    ]:
        (path / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def save_truncated(
    encoder: Encoder, path: str | os.PathLike, k: int, metadata: dict[str, Any] | None = None
) -> None:
    """Write a standalone model with only the first ``k`` blocks (``num_hidden_layers = k``).

    The folder has the same layout as `save_model` and loads in `AutoModel` (and in
    `Encoder`); its embedding equals ``encoder.encode(texts, layers=k)``. Only the k kept blocks
    are copied; this encoder is left unchanged. Trained layers above k are dropped from the
    stored metadata, and ``truncated_from`` records the original depth. Exit heads: head k is
    written as a Dense module (other libraries apply it), heads below k stay exit heads, and
    heads above k are dropped.
    """
    if not 1 <= k <= encoder.num_layers:
        raise ValueError(f"k must be in 1..{encoder.num_layers}, got {k}")
    with truncated_blocks(encoder.model, k):
        # Inside the context the model holds only k blocks and its config says k layers, so
        # the copy is the smaller model, standalone (its own config and weights).
        small = copy.deepcopy(encoder)
    ours = {**encoder.metadata, **(metadata or {}), "truncated_from": encoder.num_layers}
    if ours.get("layers"):
        ours["layers"] = [layer for layer in ours["layers"] if layer <= k] or [k]
    small.metadata = {}
    small.save(path, ours)  # through the method, as before: an override of Encoder.save applies
