"""Embedding quantisation: int8/uint8 with calibrated per-dimension ranges, and packed sign bits.

Scalar (int8/uint8): each dimension j gets a range ``[low_j, high_j]`` measured on a calibration
sample (a corpus sample, typically); a value is mapped to one of 256 levels,
``code = round((x - low) / step)`` with ``step = (high - low) / 255``, clamped to ``0..255``.
``uint8`` stores the code, ``int8`` stores ``code - 128``. Dequantising gives ``low + code * step``,
which is within ``step / 2`` of any value inside the calibrated range.

Binary: one bit per dimension, ``1`` where the value is positive, packed 8 to a byte with the first
dimension in the most significant bit (``numpy.packbits`` semantics; a width that is not a multiple
of 8 is padded with zero bits). ``ubinary`` stores the bytes as uint8; ``binary`` stores them as
int8 offset by -128 (``byte - 128``), the common convention for int8 vector indexes. Similarity
between bit vectors is the Hamming distance, counted with a 256-entry popcount table.

Storage: `bytes_per_vector` (dense: float32 4 bytes a dim, float16 2, int8 1, binary 1 bit) and
`sparse_bytes` (k nonzeros x (index + value) bytes) are the byte count eval.py reports everywhere.

Quantisation works on whatever vectors it is given: quantise the representation you search with
(e.g. Matryoshka prefixes sliced and re-normalised) and calibrate on the same representation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")

# POPCOUNT[b] = number of set bits of the byte b, for b in 0..255 (built by doubling: the bits of
# b are the bits of b >> 1 plus its lowest bit).
_POPCOUNT = [0] * 256
for _b in range(1, 256):
    _POPCOUNT[_b] = _POPCOUNT[_b >> 1] + (_b & 1)
POPCOUNT = torch.tensor(_POPCOUNT, dtype=torch.uint8)  # (256,)
_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)  # MSB first


def bytes_per_vector(dim: int, precision: str) -> int:
    """Storage of one ``dim``-wide dense vector at ``precision``, in bytes: the one byte count of
    eval.py's records, tables, ``--bytes`` budgets and the model card.

    float32 ``4 * dim``, float16 ``2 * dim`` (counted, not searched by eval.py), int8/uint8 ``dim``,
    binary/ubinary ``ceil(dim / 8)`` (sign bits packed 8 to a byte, the last byte zero-padded).
    Only what is stored per vector counts: int8's calibration ranges are two floats per
    *dimension*, shared by the whole corpus (8 * dim bytes once, not per vector), and a float query
    that rescores a binary shortlist is computed at query time, never stored.
    """
    if dim < 1:
        raise ValueError(f"dim must be at least 1, got {dim}")
    if precision == "float32":
        return 4 * dim
    if precision == "float16":
        return 2 * dim
    if precision in ("int8", "uint8"):
        return dim
    if precision in ("binary", "ubinary"):
        return (dim + 7) // 8
    raise ValueError(f"precision must be one of {(*PRECISIONS, 'float16')}, got {precision!r}")


SPARSE_VALUE_BYTES = {"float32": 4, "float16": 2}


def index_bytes(dictionary_size: int) -> int:
    """Bytes of one index into a dictionary of ``dictionary_size`` atoms (indices 0 .. size - 1):
    the smallest of 1, 2 and 4 that holds them (uint8 up to 256 atoms, uint16 up to 65,536)."""
    if dictionary_size < 1:
        raise ValueError(f"dictionary size must be at least 1, got {dictionary_size}")
    for n in (1, 2, 4):
        if dictionary_size <= 256**n:
            return n
    raise ValueError(f"dictionary size {dictionary_size} needs more than a 4-byte index")


def sparse_bytes(k: int, dictionary_size: int, value_bytes: int = 4) -> int:
    """Storage of one sparse code (CSR, issue 26) with ``k`` nonzeros out of ``dictionary_size``
    atoms: ``k * (index_bytes(dictionary_size) + value_bytes)``; value_bytes is 4 for float32
    values, 2 for float16 (`SPARSE_VALUE_BYTES`). Every vector keeps exactly k nonzeros (top-k),
    so no per-vector count or row offset is stored; zeros are not stored.
    """
    if value_bytes not in SPARSE_VALUE_BYTES.values():
        raise ValueError(f"value_bytes must be 4 (float32) or 2 (float16), got {value_bytes}")
    if not 1 <= k <= dictionary_size:
        raise ValueError(f"k must be in 1..{dictionary_size} (the dictionary size), got {k}")
    return k * (index_bytes(dictionary_size) + value_bytes)


# --------------------------------------------------------------------------------------------
# Scalar quantisation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ranges:
    """Per-dimension calibration ranges for scalar quantisation: ``low`` and ``high``, each (d,)."""

    low: Tensor
    high: Tensor

    @property
    def step(self) -> Tensor:
        """(d,) width of one quantisation level. A constant dimension (high == low) gets a tiny
        positive step so that quantising it gives code 0 and dequantising gives back ``low``."""
        return ((self.high - self.low) / 255).clamp(min=torch.finfo(torch.float32).tiny)

    @property
    def dim(self) -> int:
        return int(self.low.shape[-1])


def calibrate(embeddings: Tensor) -> Ranges:
    """Per-dimension min and max of a calibration sample ``embeddings`` (N, d), N >= 1."""
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"calibration needs a non-empty (N, d) sample, got shape {tuple(embeddings.shape)}")
    emb = embeddings.float()
    return Ranges(low=emb.min(dim=0).values, high=emb.max(dim=0).values)


def quantize_scalar(embeddings: Tensor, ranges: Ranges, precision: str = "int8") -> Tensor:
    """(N, d) float -> (N, d) int8 (``code - 128``) or uint8 (``code``), codes on 256 levels.

    Values outside the calibrated range are clamped to its ends.
    """
    if precision not in ("int8", "uint8"):
        raise ValueError(f"scalar precision must be int8 or uint8, got {precision!r}")
    if embeddings.shape[-1] != ranges.dim:
        raise ValueError(f"embeddings have width {embeddings.shape[-1]}, the ranges {ranges.dim}")
    code = ((embeddings.float() - ranges.low) / ranges.step).round().clamp(0, 255)  # (N, d) in 0..255
    if precision == "uint8":
        return code.to(torch.uint8)
    return (code - 128).to(torch.int8)


def dequantize_scalar(codes: Tensor, ranges: Ranges) -> Tensor:
    """(N, d) int8 or uint8 codes -> (N, d) float32 values ``low + code * step``."""
    if codes.dtype == torch.int8:
        level = codes.float() + 128
    elif codes.dtype == torch.uint8:
        level = codes.float()
    else:
        raise ValueError(f"codes must be int8 or uint8, got {codes.dtype}")
    return ranges.low + level * ranges.step


# --------------------------------------------------------------------------------------------
# Binary quantisation
# --------------------------------------------------------------------------------------------


def pack_bits(embeddings: Tensor, precision: str = "ubinary") -> Tensor:
    """Sign bits packed into bytes: (..., d) float -> (..., ceil(d / 8)) uint8 or int8.

    Bit ``j`` is ``embeddings[..., j] > 0``; the first dimension goes into the most significant bit
    of the first byte (``numpy.packbits``). ``binary`` returns the bytes minus 128 as int8.
    """
    if precision not in ("binary", "ubinary"):
        raise ValueError(f"binary precision must be binary or ubinary, got {precision!r}")
    d = embeddings.shape[-1]
    bits = (embeddings > 0).to(torch.uint8)  # (..., d)
    pad = (-d) % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros(*bits.shape[:-1], pad)], dim=-1)
    groups = bits.view(*bits.shape[:-1], bits.shape[-1] // 8, 8)  # (..., ceil(d / 8), 8)
    # At most one of each weight per byte, so the uint8 sum cannot overflow.
    packed = (groups * _BIT_WEIGHTS.to(bits.device)).sum(-1, dtype=torch.uint8)
    if precision == "ubinary":
        return packed
    return (packed.to(torch.int16) - 128).to(torch.int8)


def as_ubinary(packed: Tensor) -> Tensor:
    """Packed bits as uint8, whichever of the two storage conventions they come in."""
    if packed.dtype == torch.uint8:
        return packed
    if packed.dtype == torch.int8:
        return (packed.to(torch.int16) + 128).to(torch.uint8)
    raise ValueError(f"packed bits must be uint8 (ubinary) or int8 (binary), got {packed.dtype}")


def unpack_signs(packed: Tensor, dim: int) -> Tensor:
    """Packed bits (..., ceil(dim / 8)) uint8/int8 -> (..., dim) float32 of +1 (bit set) / -1."""
    data = as_ubinary(packed)
    shifts = torch.arange(7, -1, -1, device=data.device, dtype=torch.uint8)  # MSB first
    bits = (data.unsqueeze(-1) >> shifts) & 1  # (..., bytes, 8)
    bits = bits.flatten(-2)[..., :dim]  # (..., dim)
    return bits.float() * 2 - 1


def hamming_distance(queries: Tensor, docs: Tensor, use_lut: bool = False) -> Tensor:
    """Hamming distance between every query and every doc: (Q, B), (N, B) packed -> (Q, N) int32.

    The reference method, used on any device and with ``use_lut``: XOR the bytes, look up the
    popcount of each byte in a 256-entry table, sum over the B bytes (peak temporary memory
    Q * N * B bytes, so call it on corpus chunks as `mrl.retrieval` does). On the CPU with
    numpy >= 2 the same count is done by ``numpy.bitwise_count`` (the hardware popcount) on
    machine words, one word at a time into a running sum: measured about 100x faster than the
    table gather on this machine, which makes binary search faster than a float matmul rather
    than slower. Both give identical integers (tests/test_retrieval.py checks them against
    ``bin(x).count("1")``).
    """
    q = as_ubinary(queries)
    d = as_ubinary(docs)
    if q.shape[-1] != d.shape[-1]:
        raise ValueError(f"queries have {q.shape[-1]} bytes per vector, docs {d.shape[-1]}")
    if not use_lut and q.device.type == "cpu" and d.device.type == "cpu" and hasattr(np, "bitwise_count"):
        return _hamming_numpy(q, d)
    xor = torch.bitwise_xor(q[:, None, :], d[None, :, :])  # (Q, N, B) uint8
    table = POPCOUNT.to(xor.device)
    return table[xor.long()].sum(-1, dtype=torch.int32)  # (Q, N)


def paired_hamming(a: Tensor, b: Tensor) -> Tensor:
    """Hamming distance of row i of ``a`` to row i of ``b``: (N, B), (N, B) packed -> (N,) int32
    (the diagonal of `hamming_distance`, without the N x N matrix; STS pairs)."""
    x, y = as_ubinary(a), as_ubinary(b)
    if x.shape != y.shape:
        raise ValueError(
            f"paired bit vectors must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    return POPCOUNT.to(x.device)[torch.bitwise_xor(x, y).long()].sum(-1, dtype=torch.int32)


def _hamming_numpy(q: Tensor, d: Tensor, block: int = 4096) -> Tensor:
    """`hamming_distance` with numpy's popcount; q (Q, B), d (N, B) uint8 -> (Q, N) int32."""
    n_bytes = q.shape[-1]
    # The widest machine word that divides the row: popcount(xor) does not depend on byte order.
    word = next(w for w in (np.uint64, np.uint32, np.uint16, np.uint8) if n_bytes % np.dtype(w).itemsize == 0)
    qw = np.ascontiguousarray(q.numpy()).view(word)  # (Q, W)
    dw = np.ascontiguousarray(d.numpy()).view(word)  # (N, W)
    out = np.empty((qw.shape[0], dw.shape[0]), dtype=np.int32)
    acc_dtype = np.uint16 if n_bytes * 8 <= np.iinfo(np.uint16).max else np.int32
    for start in range(0, dw.shape[0], block):  # a block of docs keeps the (Q, block) sums in cache
        words = np.ascontiguousarray(dw[start : start + block].T)  # (W, n) so each word row is contiguous
        # A word-at-a-time running sum avoids numpy's slow reduction over a short last axis.
        acc = np.zeros((qw.shape[0], words.shape[1]), dtype=acc_dtype)
        for w in range(words.shape[0]):
            acc += np.bitwise_count(np.bitwise_xor(qw[:, w, None], words[w, None, :]))
        out[:, start : start + words.shape[1]] = acc
    return torch.from_numpy(out)


def quantize(embeddings: Tensor, precision: str, ranges: Ranges | None = None) -> Tensor:
    """(N, d) float -> the stored form at ``precision`` (float32, int8/uint8 codes, packed bits).

    Scalar precisions need ``ranges`` (see `calibrate`).
    """
    if precision == "float32":
        return embeddings.float()
    if precision in ("int8", "uint8"):
        if ranges is None:
            raise ValueError(f"{precision} quantisation needs calibration ranges")
        return quantize_scalar(embeddings, ranges, precision)
    if precision in ("binary", "ubinary"):
        return pack_bits(embeddings, precision)
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
