"""Embed a list of texts once and keep the vectors on disk, keyed by the model and the texts.

A frozen encoder gives the same vectors every time, so an adaptor (`mrl.adaptor`) trained on them
never needs to run the encoder again: the first call encodes and writes
``<cache_dir>/<model key>-<data key>.safetensors``; every later call with the same model (same
weights, pooling, maximum length, lower-casing) and the same texts in the same order reads it back.
Change either and the key changes: a stale file is never read.

    from mrl.embcache import cached_embeddings, load_embeddings

    emb = cached_embeddings(encoder, corpus_texts, "runs/cache")  # (N, D) raw pooled vectors
    api = load_embeddings("openai_corpus.npy")  # (N, D) from any source, e.g. a closed API

The keys are content hashes (sha256): the model key covers every tensor of the encoder's state and
the settings that change its output; the data key covers the texts. A file is written atomically
(temporary file + rename), so a crash mid-write leaves no half file behind, and its stored keys are
checked again on read.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

EMBEDDINGS_KEY = "embeddings"


def texts_key(texts: Sequence[str]) -> str:
    """sha256 of the texts in order; each is length-prefixed so no two lists share a key."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def tokenizer_key(tokenizer) -> str:
    """sha256 of what sets a tokenizer's ids: a fast tokenizer's whole serialisation (vocabulary,
    normaliser, pre-tokeniser, post-processor), else its class, vocabulary and settings. The same
    weights with another tokenizer (or none: every word [UNK]) give other vectors."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # less the truncation / padding state the last call left behind
        state = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        digest.update(json.dumps(state, sort_keys=True).encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    # Where the files were read from is no part of the tokenizer (copies of a folder share a key).
    where = {"name_or_path", "is_local", "local_files_only", "_commit_hash", "cache_dir", "revision", "token"}
    settings = {
        k: v
        for k, v in getattr(tokenizer, "init_kwargs", {}).items()
        if k not in where and not k.endswith("_file")
    }
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(json.dumps(sorted(tokenizer.all_special_tokens)).encode())
    return digest.hexdigest()


def model_key(encoder) -> str:
    """sha256 of everything that sets an `mrl.model.Encoder`'s output: every tensor of its state
    (names, dtypes, shapes, bytes; an attached head or adaptor included), the transformer's config
    (layer-norm epsilon, activation...: not in the tensors), the tokenizer (`tokenizer_key`), and
    pooling, maximum length, lower-casing. The vectors are cached raw (un-normalised, no prompt:
    the texts are the data key). Hashing ~90 MB of MiniLM weights takes a fraction of a second."""
    digest = hashlib.sha256()
    config = getattr(getattr(encoder, "model", None), "config", None)
    settings = {
        "pooling": encoder.pooling,
        "max_seq_length": encoder.max_seq_length,
        "do_lower_case": encoder.do_lower_case,
        # Where the folder was is no part of the model: copies of one folder share a key.
        "config": {k: v for k, v in config.to_diff_dict().items() if k != "_name_or_path"}
        if config
        else None,
        "tokenizer": tokenizer_key(encoder.tokenizer) if getattr(encoder, "tokenizer", None) else None,
    }
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in encoder.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def cache_folder(given: str | None = None) -> Path:
    """The folder of cached embeddings: ``given`` (``--embedding-cache``), else
    ``$MRL_EMBEDDING_CACHE``, else ``~/.cache/mrl/embeddings``."""
    return Path(given or os.environ.get("MRL_EMBEDDING_CACHE") or "~/.cache/mrl/embeddings").expanduser()


def cache_path(cache_dir: str | Path, model: str, data: str) -> Path:
    """The file for one (model key, data key): 16 hex digits of each are plenty to tell runs apart."""
    return Path(cache_dir) / f"{model[:16]}-{data[:16]}.safetensors"


def cached_embeddings(
    encoder,
    texts: Sequence[str],
    cache_dir: str | Path | None,
    batch_size: int = 64,
    show_progress: bool = False,
    log=print,
) -> Tensor:
    """Raw (un-normalised) final-layer embeddings of ``texts``, (N, D) float32, encoded at most once.

    ``cache_dir=None`` encodes without caching. On a hit the file is read back (its stored model
    and data keys must match in full; anything unreadable is reported through ``log`` and encoded
    again). On a miss the texts are encoded with ``encoder.encode(normalize=False)`` and written.
    """
    texts = list(texts)
    if cache_dir is None:
        return encoder.encode(texts, batch_size=batch_size, show_progress=show_progress, normalize=False)
    keys = {"model_key": model_key(encoder), "data_key": texts_key(texts)}
    path = cache_path(cache_dir, keys["model_key"], keys["data_key"])
    if path.is_file():
        try:
            emb, meta = _read(path)
            if all(meta.get(k) == v for k, v in keys.items()) and emb.shape[0] == len(texts):
                return emb
            log(f"embedding cache {path}: stored keys do not match (a hash prefix clash?); encoding again")
        except Exception as error:  # a damaged file is recomputed, never trusted
            log(f"embedding cache {path} is unreadable ({type(error).__name__}: {error}); encoding again")
    start = time.perf_counter()
    emb = encoder.encode(texts, batch_size=batch_size, show_progress=show_progress, normalize=False)
    meta = {
        **keys,
        "model": str(getattr(encoder, "name_or_path", "")),
        "texts": str(len(texts)),
        "dim": str(emb.shape[-1]),
        "seconds": f"{time.perf_counter() - start:.1f}",
        "created": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({EMBEDDINGS_KEY: emb.contiguous()}, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return emb


def _read(path: Path) -> tuple[Tensor, dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(EMBEDDINGS_KEY).float(), dict(f.metadata() or {})


def load_embeddings(path: str | Path, key: str | None = None) -> Tensor:
    """Precomputed embeddings from a file, as a float32 (N, D) tensor.

    ``.npy`` (numpy.save of an (N, D) array; no pickles) or ``.safetensors`` holding one tensor, or
    several with ``key`` naming one (default: ``"embeddings"`` when present). Errors are one
    ValueError line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".safetensors"):
        raise ValueError(f"{path}: expected a .npy or .safetensors file")
    try:
        if suffix == ".npy":
            emb = torch.from_numpy(np.ascontiguousarray(np.load(path, allow_pickle=False)))
        else:
            with safe_open(str(path), framework="pt") as f:
                names = list(f.keys())
                if key is None and len(names) == 1:
                    key = names[0]
                key = key or EMBEDDINGS_KEY
                emb = f.get_tensor(key) if key in names else None
    except Exception as error:  # numpy / safetensors parse errors: one line, naming the file
        message = str(error).splitlines()[0] if str(error) else ""
        raise ValueError(f"{path}: cannot read embeddings ({type(error).__name__}: {message})") from None
    if emb is None:
        raise ValueError(f"{path}: has no tensor {key!r} (it holds {names}); name one")
    if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] == 0:
        raise ValueError(f"{path}: expected a non-empty (N, D) matrix, got shape {tuple(emb.shape)}")
    if not (emb.is_floating_point() or emb.dtype in (torch.int8, torch.uint8, torch.int16, torch.int32)):
        raise ValueError(f"{path}: expected numbers, got dtype {emb.dtype}")
    emb = emb.float()
    if not torch.isfinite(emb).all():
        row = int((~torch.isfinite(emb)).any(-1).nonzero()[0])
        raise ValueError(f"{path}: row {row} holds a non-finite value")
    return emb
