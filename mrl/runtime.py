"""Device, precision, memory and command-line helpers shared by train.py and eval.py."""

from __future__ import annotations

import argparse
import contextlib
import resource
import signal
import sys
import threading

import torch

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# The autocast precisions of training and evaluation (not the stored-vector precisions of
# `mrl.quantize.PRECISIONS`: float32 / int8 / binary...).
AMP_PRECISIONS = ("fp32", *AMP_DTYPES)


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` takes CUDA, then Apple MPS, then the CPU; anything else is passed to torch after
    checking that it exists here (ValueError, one line: a missing GPU must not surface later as
    a traceback from the first ``.to(device)``)."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ValueError(f"{name!r} is not a device (auto, cpu, cuda, cuda:N, mps)") from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                built = "no GPU is visible" if torch.version.cuda else "this torch is built without CUDA"
                raise ValueError(f"{name}: CUDA is not available ({built}); use --device cpu or auto")
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise ValueError(f"{name}: only {torch.cuda.device_count()} GPU(s) are visible")
        elif device.type == "mps" and not (
            torch.backends.mps.is_built() and torch.backends.mps.is_available()
        ):
            raise ValueError(f"{name}: Apple MPS is not available here; use --device cpu or auto")
        elif device.type not in ("cpu", "cuda", "mps"):
            raise ValueError(f"{name}: unsupported device type (auto, cpu, cuda, cuda:N, mps)")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_for(device: torch.device, precision: str):
    """The autocast context for ``precision`` (fp32: a no-op), built once and reused."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[precision])


def cpu_lacks_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU flags (Linux) show neither AVX512-BF16 nor AMX-BF16: bf16 matmuls are then
    emulated, several times slower than fp32 (measured 4x per step on an AVX2 AMD EPYC, see the
    README). False when the flags show one, or cannot be read."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return bool(flags) and not any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def peak_memory_gb(device: torch.device) -> float:
    """Peak accelerator memory, or the process's peak RSS on CPU (Linux reports KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def quiet_transformers() -> None:
    """No per-file progress bars when loading or saving weights: they drown the training log."""
    from transformers.utils import logging

    logging.disable_progress_bar()


# SIGHUP does not exist on Windows.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else []))


@contextlib.contextmanager
def stop_on_signals(signals=STOP_SIGNALS):
    """While active, SIGTERM/SIGINT/SIGHUP only set ``stop["signal"]``; the loop checks it between
    steps, saves a checkpoint and exits (SIGHUP: a dropped ssh session would otherwise end the run
    with no checkpoint and no message). A second signal acts at once (default handler). The previous
    handlers come back on exit. Outside the main thread (no signal handling) it does nothing. A
    signal the process was started to ignore stays ignored: under ``nohup`` a hang-up must not stop
    the run it was meant to keep alive."""
    stop: dict[str, int] = {}

    def request_stop(signum, _frame):
        stop["signal"] = signum
        signal.signal(signum, signal.SIG_DFL)

    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    signals = [sig for sig in signals if signal.getsignal(sig) is not signal.SIG_IGN]
    previous = {sig: signal.signal(sig, request_stop) for sig in signals}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main_error(message: str) -> None:
    """Print a one-line error and exit non-zero (entry scripts use this for bad input)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_int_pairs(specs: list[str], flag: str, form: str) -> list[tuple[int, int]]:
    """``["2:32", "4:64"]`` -> ``[(2, 32), (4, 64)]`` (``--layer-dim-pairs``, ``--funnel``); a bad
    spec is a ValueError naming ``flag`` and the expected ``form``, e.g. "LAYER:DIM (e.g. 4:64)"."""
    pairs = []
    for spec in specs:
        try:
            a, b = (int(part) for part in spec.split(":"))
        except ValueError:
            raise ValueError(f"{flag}: '{spec}' is not {form}") from None
        pairs.append((a, b))
    return pairs


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (its usage block is what --help is for)."""

    def error(self, message: str):
        hint = ""
        if "expected one argument" in message or "expected at least one argument" in message:
            hint = "; a negative number needs the = form, e.g. --lr=-1e-5"
        self.exit(2, f"error: {message}{hint} (--help lists every flag)\n")
