"""Learner state as bytes: a JSON header and named numpy arrays (no pickle).

Layout: ``b"BCTL"`` + format version (1 byte) + header length (4 bytes, big
endian) + UTF-8 JSON header + an uncompressed ``.npz`` archive. Floats travel
bit-exactly, so a reloaded learner makes exactly the decisions it would have.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

MAGIC = b"BCTL"
FORMAT = 1


def pack(header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> bytes:
    head = json.dumps(header, sort_keys=True).encode()
    buf = io.BytesIO()
    np.savez(buf, **(arrays or {}))  # type: ignore[arg-type]
    return MAGIC + bytes([FORMAT]) + len(head).to_bytes(4, "big") + head + buf.getvalue()


def unpack(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    if data[:4] != MAGIC:
        raise ValueError("not a banditctl learner state")
    if data[4] != FORMAT:
        raise ValueError(f"unsupported learner state format {data[4]}")
    n = int.from_bytes(data[5:9], "big")
    header = json.loads(data[9 : 9 + n])
    with np.load(io.BytesIO(data[9 + n :]), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return header, arrays


def peek_kind(data: bytes) -> str:
    """The learner kind stored in ``data``, without loading the arrays."""
    if data[:4] != MAGIC or len(data) < 9:
        raise ValueError("not a banditctl learner state")
    n = int.from_bytes(data[5:9], "big")
    return str(json.loads(data[9 : 9 + n])["kind"])
