"""Loading Hugging Face artifacts (models, tokenizers, datasets, timm weights) by hub name or local
directory, with one-line errors that say how to point at a local copy: what tasks (tokenizers, hub
datasets) and backbones (weights) share.

Without network, huggingface_hub retries every file five times with back-off (about 25 s per file,
~50 s before a run with a hub name fails). :func:`use_hub` therefore probes the hub once per process
and, when it cannot be reached, switches the process to Hugging Face's offline mode: hub names then
load from the local cache or fail at once. An explicit ``HF_HUB_OFFLINE`` (0 or 1) is never second-guessed.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import urllib.request
from urllib.parse import urlparse

from gfsa.utils.errors import ConfigError, first_line

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0  # DNS included: a probe that hangs counts as unreachable
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
_unreachable: str | None = None  # the hub's address, once a probe found it unreachable
_probed = False


def _hub_address() -> tuple[str, int, str]:
    """(host, port, name) to probe: the hub (``HF_ENDPOINT``), or the proxy that requests to it go through."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = url.hostname or "huggingface.co"
    name = host
    proxy = urllib.request.getproxies().get(url.scheme or "https")
    if proxy and not urllib.request.proxy_bypass(host):
        url = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        name = f"{host} through the proxy {url.hostname}"
        host = url.hostname or host
    return host, url.port or (443 if url.scheme == "https" else 80), name


def _reachable(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, name="hf-hub-probe", daemon=True)  # getaddrinfo has no timeout
    thread.start()
    thread.join(timeout)
    return bool(ok)


def _go_offline() -> None:
    """Offline mode for this process and its workers. The libraries read the variable once, at import, so
    the copies of those already imported are set too (each reads its copy at every request)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True


def use_hub() -> None:
    """Before loading anything by hub name: probe the hub once; unreachable → offline mode, with one notice."""
    global _probed, _unreachable
    if _probed or any(os.environ.get(v) for v in OFFLINE_VARIABLES):
        return
    _probed = True
    host, port, name = _hub_address()
    if _reachable(host, port):
        return
    _unreachable = name
    _go_offline()
    log.warning(
        f"the Hugging Face hub ({name}) cannot be reached: hub names load from the local cache only "
        "(HF_HUB_OFFLINE=1; set HF_HUB_OFFLINE=0 to wait for the hub)"
    )


def is_local(source: str) -> bool:
    """A directory, or something written as a path (hub names are ``name`` or ``org/name``)."""
    return os.path.isdir(source) or source.startswith((".", "~", "/")) or source.count("/") > 1


def hub_failure(e: Exception) -> str:
    """Why the hub could not provide something, in a few words."""
    if _unreachable:
        return f"{_unreachable} cannot be reached, and the local cache does not have it"
    return f"offline or unknown name: {first_line(e)}"


def pretrained_error(source: str, what: str, e: Exception) -> ConfigError:
    """One line that says why ``source`` could not be loaded and how to point at a local copy."""
    fix = (
        "pass backbone.pretrained=<local dir with the config, weights and tokenizer files that save_pretrained writes>"
    )
    if os.path.isdir(source):
        return ConfigError(
            f"backbone.pretrained={source}: cannot load the {what} from this directory ({first_line(e)}); {fix}"
        )
    if is_local(source):
        return ConfigError(f"backbone.pretrained={source}: no such directory; {fix}")
    return ConfigError(
        f"backbone.pretrained={source}: not a local directory, and the Hugging Face hub cannot provide it "
        f"({hub_failure(e)}); {fix}"
    )


def load_tokenizer(source: str):
    """The checkpoint's tokenizer (hub name or local dir), or a one-line ConfigError."""
    from transformers import AutoTokenizer

    source = os.path.expanduser(source)
    if not is_local(source):
        use_hub()
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as e:
        raise pretrained_error(source, "tokenizer", e) from None
