"""Hub ids without network: answered at once, from the local cache or with the fix.

Without network, ``from_pretrained`` on a hub id retries five times (about 25 s) and then
says it could not connect. :func:`hub_options` is asked first, whenever a hub id is
about to be loaded: it tries the hub's host name once (a DNS lookup, at most
:data:`PROBE_TIMEOUT_S` seconds) unless ``HF_HUB_OFFLINE`` is set, then loads from the
local Hugging Face cache when the hub cannot be reached, or refuses with
:class:`HubUnreachable` when the model is not cached either.
"""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 5.0
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
"""``owner/name``: what the hub accepts as a model id."""


class HubUnreachable(OSError):
    """A hub id was given, the hub cannot be reached and the model is not cached."""


def hub_options(source: str, what: str = "the model") -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for the hub id ``source``.

    ``{}`` when the hub can be reached (or ``source`` is not a hub id); ``{"local_files_only":
    True}`` when it cannot but ``source`` is in the local cache. Raises
    :class:`HubUnreachable` naming the fix otherwise. ``what``: how the message names it.
    """
    if not HUB_ID.fullmatch(source) or Path(source).expanduser().exists():
        return {}  # a local path (from_pretrained says what is wrong with it)
    from huggingface_hub import constants, try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(source, "config.json"), str)
    fix = (
        f"pass a local folder of {what} instead, or download {source} where there is network "
        "(`hf download " + source + "`) and copy the Hugging Face cache (HF_HOME) here"
    )
    if constants.HF_HUB_OFFLINE:
        if cached:
            return {"local_files_only": True}
        raise HubUnreachable(
            f"no network (HF_HUB_OFFLINE is set) and {source} is not in the local Hugging Face "
            f"cache: {fix}"
        )
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    if _resolves(host):
        return {}
    if cached:
        return {"local_files_only": True}
    raise HubUnreachable(
        f"no network (cannot resolve {host}) and {source} is not in the local Hugging Face "
        f"cache: {fix}"
    )


def _resolves(host: str) -> bool:
    """Whether ``host`` resolves within :data:`PROBE_TIMEOUT_S` (one DNS lookup)."""
    found: list[bool] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, 443)
            found.append(True)
        except OSError:
            found.append(False)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S)
    return bool(found and found[0])
