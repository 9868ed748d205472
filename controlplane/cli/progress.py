"""Progress bars for long commands: tqdm when it is installed (the ``sim`` and ``demo``
extras bring it), else a bar that shows nothing."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Any


def progress_bar(**kwargs: Any) -> Any:
    """A context manager yielding an object with ``update(n)`` and ``set_postfix(**kw)``."""
    try:
        from tqdm import tqdm
    except ModuleNotFoundError:
        quiet = SimpleNamespace(update=lambda *_args: None, set_postfix=lambda **_kwargs: None)
        return contextlib.nullcontext(quiet)
    return tqdm(**kwargs)
