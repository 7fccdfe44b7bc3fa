"""Decimal text of float columns, for the text formats, exactly as Python writes each value
(``f"{v:.Nf}"`` and ``repr(round(v, N))``) but for a whole column at once (numpy + pyarrow).

Both are the value correctly rounded to N decimals (halves to even, decided on the value's exact
binary expansion). ``v·10^N`` is formed as an unevaluated sum ``p + e`` (Dekker's exact
product), so the rounding sees the exact product: only when ``p`` lies exactly halfway does the
error term decide the direction. Values must be finite and below 2^50 / 10^N in magnitude.

>>> import numpy as np
>>> v = np.array([2.25, 2.35, -0.04, 1234.5, 0.0, 7.0])
>>> fixed(v, 1).to_pylist() == [f"{x:.1f}" for x in v]
True
>>> shortest(v, 3).to_pylist() == [repr(round(float(x), 3)) for x in v]
True
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_SPLIT = 134217729.0  # 2^27 + 1 (Veltkamp)


def _exact_product(values: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """``values · factor`` as ``p + e`` with ``p`` the rounded product and ``e`` its exact error."""
    p = values * factor
    t = values * _SPLIT
    hi = t - (t - values)
    lo = values - hi
    f = factor * _SPLIT
    f_hi = f - (f - factor)
    f_lo = factor - f_hi
    e = ((hi * f_hi - p) + hi * f_lo + lo * f_hi) + lo * f_lo
    return p, e


def scaled_integers(values: np.ndarray, digits: int) -> tuple[np.ndarray, np.ndarray]:
    """(sign bit, |v| correctly rounded to ``digits`` decimals, times 10^digits as int64)."""
    values = np.asarray(values, dtype=np.float64)
    negative = np.signbit(values)
    magnitude = np.abs(values)
    p = magnitude * float(10**digits)
    q = np.rint(p)  # halves to even: right unless p is a half that the product's error pushes off
    floor = np.floor(p)
    half = np.flatnonzero((p - floor) == 0.5)
    if len(half):
        _, e = _exact_product(magnitude[half], float(10**digits))
        q[half] = np.where(e > 0, floor[half] + 1, np.where(e < 0, floor[half], q[half]))
    return negative, q.astype(np.int64)


def _strings(negative: np.ndarray | None, q: np.ndarray, digits: int, trim: bool) -> pa.Array:
    """Decimal text of the integers ``q`` / 10^digits (a sign where ``negative``), built as a
    matrix of characters and compacted: [sign][integer digits].[``digits`` decimals, or with
    ``trim`` the decimals without trailing zeros but at least one]."""
    n = len(q)
    scale = 10**digits
    whole, frac = q // scale, q % scale
    width = max(1, len(str(int(whole.max())))) if n else 1
    chars = np.empty((n, 1 + width + 1 + max(digits, 0)), dtype=np.uint8)
    keep = np.ones(chars.shape, dtype=bool)
    chars[:, 0] = ord("-")
    keep[:, 0] = False if negative is None else negative
    for j in range(width):  # j-th digit from the right
        power = 10**j
        chars[:, width - j] = 48 + (whole // power) % 10
        if j:
            keep[:, width - j] = whole >= power
    dot = width + 1
    chars[:, dot] = ord(".")
    if digits == 0:
        keep[:, dot] = False
    for i in range(digits):  # i-th decimal
        power = 10 ** (digits - 1 - i)
        chars[:, dot + 1 + i] = 48 + (frac // power) % 10
        if trim and i:
            keep[:, dot + 1 + i] = (frac % (power * 10)) != 0  # a nonzero digit here or after
    lengths = keep.sum(axis=1)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    data = chars[keep]
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def fixed(values: np.ndarray, digits: int) -> pa.Array:
    """``f"{v:.{digits}f}"`` of each value (``digits`` ≥ 1)."""
    negative, q = scaled_integers(values, digits)
    return _strings(negative, q, digits, trim=False)


def shortest(values: np.ndarray, digits: int) -> pa.Array:
    """``repr(round(v, digits))`` of each value (``digits`` from 1 to 4, so that ``repr`` writes
    no exponent)."""
    negative, q = scaled_integers(values, digits)
    return _strings(negative, q, digits, trim=True)


def integers(values: np.ndarray) -> pa.Array:
    """``str(int(round(v)))`` of each value."""
    q = np.rint(np.asarray(values, dtype=np.float64)).astype(np.int64)
    return _strings(q < 0, np.abs(q), 0, trim=False)


def concatenated(strings: pa.Array) -> bytes:
    """The strings of a string array one after another (its character data, no copy per string)."""
    strings = pc.cast(strings, pa.string())
    if len(strings) == 0:
        return b""
    if strings.null_count:
        raise ValueError("null text")
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int32)[strings.offset : strings.offset + len(strings) + 1]
    return strings.buffers()[2].to_pybytes()[int(offsets[0]) : int(offsets[-1])]


def list_parts(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A list<float64> column as (flat values, offsets from 0)."""
    lists = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = np.asarray(lists.offsets, dtype=np.int64)
    values = np.asarray(lists.values, dtype=np.float64)[offsets[0] : offsets[-1]]
    return values, offsets - offsets[0]


def joined(strings: pa.Array, offsets: np.ndarray, separator: str) -> pa.Array:
    """Each run ``strings[offsets[k]:offsets[k+1]]`` joined with ``separator``."""
    lists = pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), strings)
    return pc.binary_join(lists, separator)
