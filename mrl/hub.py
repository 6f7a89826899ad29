"""Can the Hugging Face hub be used right now? Asked once per process, in about a second.

Without this, a model or dataset id that is not in the local cache costs an offline user about
half a minute: `huggingface_hub` retries the metadata request before it gives up (measured here,
transformers 5.24 / huggingface_hub 1.x: 32 s for ``AutoModel.from_pretrained`` of a hub id with
no network). The libraries' own offline mode (``HF_HUB_OFFLINE=1``, or ``local_files_only=True``
per call) answers at once from the cache; this module decides when to use it: when
``HF_HUB_OFFLINE`` is set, or when a TCP connection to the hub endpoint (``HF_ENDPOINT``, default
https://huggingface.co) fails within `PROBE_TIMEOUT_S`. Behind a proxy (``HTTPS_PROXY``...) the
probe is skipped, since only the proxy knows.

Callers then load with ``local_files_only=True`` (a cached copy still works) and, when that
fails, stop with one line that says the hub could not be reached and why.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


@functools.lru_cache(maxsize=1)
def offline_reason() -> str | None:
    """Why the hub cannot be used now ("HF_HUB_OFFLINE is set", "huggingface.co:443: ..."), or
    None when it can (or when a proxy is configured and we cannot tell)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return None
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as error:
        why = error.strerror or type(error).__name__  # e.g. "Name or service not known", "timed out"
        return f"{host}:{port} is unreachable ({why})"
    return None


def offline_error(name: str, what: str, reason: str) -> str:
    """The one line for a hub id that is neither local nor in the cache while the hub is out of reach."""
    return (
        f"{name}: not a local {what}, and the Hugging Face hub cannot be used ({reason}) "
        f"and it is not in the local cache; give a local {what} (or connect and retry)"
    )
