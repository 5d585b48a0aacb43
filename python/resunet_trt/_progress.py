"""One progress-bar helper for the library and the command-line tools (tqdm is optional)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger("resunet_trt")


def progress(items: Iterable[Any], *, enabled: bool, **kwargs: Any) -> Iterable[Any]:
    """Wrap ``items`` in a tqdm bar on stderr when ``enabled`` and tqdm is installed, else return them as they are.

    Args:
        items: what to iterate over.
        enabled: show a bar at all.
        **kwargs: passed to tqdm (``desc``, ``unit``, ``leave``...).
    """
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:
        logger.warning("progress bars need tqdm (pip install tqdm); continuing without one")
        return items
    kwargs.setdefault("file", sys.stderr)
    return tqdm(items, **kwargs)
