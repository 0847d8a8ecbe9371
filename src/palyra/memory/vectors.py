"""Vectors as stored: unit length, little-endian float32. Scoring is a dot product in plain Python.

numpy is not a dependency; ``array('f')`` decodes without a per-element Python call and
``sum(map(mul, …))`` keeps the inner loop in C, which is fast enough for thousands of items.
"""

from __future__ import annotations

import heapq
import math
import struct
import sys
from array import array
from collections.abc import Iterable, Sequence
from operator import mul

_BIG_ENDIAN = sys.byteorder == "big"


class InvalidVector(ValueError):
    """An embedding that cannot be stored: empty, the wrong length, or not finite."""


def encode(vector: Sequence[float], dims: int) -> bytes:
    """L2-normalise and pack; a zero vector stays zero (it scores 0 against everything)."""
    if len(vector) != dims or dims <= 0:
        raise InvalidVector(f"expected {dims} dimensions, got {len(vector)}")
    norm_sq = math.fsum(x * x for x in vector)
    if not math.isfinite(norm_sq):
        raise InvalidVector("the embedding has non-finite values")
    scale = 1.0 / math.sqrt(norm_sq) if norm_sq > 0 else 0.0
    return struct.pack(f"<{dims}f", *(x * scale for x in vector))


def decode(blob: bytes) -> array[float]:
    values = array("f")
    values.frombytes(blob)
    if _BIG_ENDIAN:
        values.byteswap()
    return values


def dot(a: Sequence[float], b: Sequence[float]) -> float:
    return float(sum(map(mul, a, b)))


def top_k(query: bytes, candidates: Iterable[tuple[str, bytes]], k: int) -> list[tuple[str, float]]:
    """The k best (id, cosine) pairs, best first (ties: earlier candidate first). Both sides are
    stored unit vectors, so the cosine is their dot product; a blob of another length is skipped."""
    q = decode(query)
    scored = ((item_id, dot(q, decode(blob))) for item_id, blob in candidates if len(blob) == len(query))
    return heapq.nlargest(k, scored, key=lambda pair: pair[1])
