"""Key -> row maps of the feature tables, probed by compiled code a batch at a time.

A Python ``dict`` of 200,000 string keys costs about four dependent cache
misses per lookup (index, entry, stored key, stored row), which made key
lookup the largest part of a feature update. :class:`KeyTable` stores
``(hash, row)`` pairs in one open-addressing array (linear probing, at
most half full), so a lookup is about one miss, and the misses of a batch
overlap because the probes of different events do not depend on each other.

Keys are identified by their 64-bit keyed hash: Python's ``hash`` of the
string (SipHash-1-3 under a per-process random key), so equal keys always
meet and the table is rebuilt from the keys after a restore. Two different
keys share a row only if their hashes collide: with ``n`` keys in a table
the chance is about ``n**2 / 2**65`` (1e-9 at 200,000 keys, 3e-6 at 10
million), and because the key is random and secret it cannot be aimed at.
Do not set ``PYTHONHASHSEED`` in production: a fixed key makes collisions
reproducible. docs/features.md, "Keys", says the same.

>>> import numpy as np
>>> t = KeyTable()
>>> t.insert(np.array([hash("c-1"), hash("c-2")]), np.array([0, 1]))
>>> t.lookup(np.array([hash("c-2"), hash("c-3")])).tolist()
[1, -1]
>>> t.remove(np.array([hash("c-2")])); t.lookup(np.array([hash("c-2")])).tolist()
[-1]
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from intentflow.features.kernels import inlined, kernel

__all__ = ["KeyTable", "drop", "probe", "put", "put_absent"]

I64 = npt.NDArray[np.int64]

#: What a lookup of an absent hash returns.
EMPTY: Final = -1
#: Column 1 of a free slot. A held hash's slot stores its row + 1, so that a new
#: table is all zeros: its pages are mapped when first written, not when made.
FREE: Final = 0
#: Slots start at this many and double; a table is at most half full.
MIN_SLOTS: Final = 1024


@inlined
def _slot(slots: I64, h: int, mask: int) -> int:
    """The slot holding hash ``h``, or the empty slot that ends its probe run."""
    s = h & mask
    while slots[s, 1] != FREE and slots[s, 0] != h:
        s = (s + 1) & mask
    return s


@inlined
def _delete(slots: I64, s: int, mask: int) -> None:
    """Empty the occupied slot ``s``, closing the gap by backward shift.

    Every later entry of the cluster whose home slot is not cyclically in
    ``(s, j]`` moves up, so no probe path crosses a hole.
    """
    j = s
    while True:
        j = (j + 1) & mask
        if slots[j, 1] == FREE:
            break
        home = slots[j, 0] & mask
        if (home - s - 1) & mask >= (j - s) & mask:
            slots[s, 0] = slots[j, 0]
            slots[s, 1] = slots[j, 1]
            s = j
    slots[s, 1] = FREE


@kernel
def probe(slots: I64, hashes: I64, out: I64) -> int:
    """``out[i]``: the row stored under ``hashes[i]``, -1 when there is none; returns the -1s."""
    mask = slots.shape[0] - 1
    missing = 0
    for i in range(hashes.shape[0]):
        row = slots[_slot(slots, hashes[i], mask), 1] - 1  # a free slot gives -1
        out[i] = row
        if row == EMPTY:
            missing += 1
    return missing


@kernel
def put(slots: I64, hashes: I64, rows: I64) -> int:
    """Store ``rows[i]`` under ``hashes[i]``; returns how many hashes were not held before.

    The row of a hash already held is replaced.
    """
    mask = slots.shape[0] - 1
    added = 0
    for i in range(hashes.shape[0]):
        s = _slot(slots, hashes[i], mask)
        if slots[s, 1] == FREE:
            added += 1
        slots[s, 0] = hashes[i]
        slots[s, 1] = rows[i] + 1
    return added


@kernel
def put_absent(
    slots: I64,
    hashes: I64,
    first: int,
    added: npt.NDArray[np.bool_],
    ring_hash: I64,
    ring_ts: I64,
    ts: I64,
    head: int,
    cap: int,
) -> tuple[int, int, int]:
    """Store ``first``, ``first + 1``, ... under the hashes not held yet, in order.

    ``added[i]`` tells whether ``hashes[i]`` was stored (a hash repeated in
    ``hashes`` is stored once, at its first place).
    The hash and ``ts`` of the one stored as number ``n`` also go to
    position ``n & (size - 1)`` of the rings (their size a power of two).

    Numbers ``head .. first - 1`` are held. With ``cap`` > 0 at most ``cap``
    are: before a new hash is stored at the cap, the oldest number is
    forgotten (its hash read from the ring; removed from the table only if
    the table still maps it to that number). Returns how many were stored,
    how many numbers were forgotten and how many of those left the table.
    """
    mask = slots.shape[0] - 1
    ring_mask = ring_hash.shape[0] - 1
    k = 0
    gone = 0
    removed = 0
    for i in range(hashes.shape[0]):
        s = _slot(slots, hashes[i], mask)
        if slots[s, 1] != FREE:
            added[i] = False
            continue
        n = first + k
        if cap > 0 and n - (head + gone) >= cap:
            old = head + gone
            o = _slot(slots, ring_hash[old & ring_mask], mask)
            if slots[o, 1] == old + 1:
                _delete(slots, o, mask)
                removed += 1
                s = _slot(slots, hashes[i], mask)  # the shift may have moved the run's end
            gone += 1
        slots[s, 0] = hashes[i]
        slots[s, 1] = n + 1
        pos = n & ring_mask
        ring_hash[pos] = hashes[i]
        ring_ts[pos] = ts[i]
        k += 1
        added[i] = True
    return k, gone, removed


@kernel
def drop(slots: I64, hashes: I64) -> None:
    """Forget ``hashes`` (absent ones are ignored), closing gaps by backward shift."""
    mask = slots.shape[0] - 1
    for i in range(hashes.shape[0]):
        s = _slot(slots, hashes[i], mask)
        if slots[s, 1] != FREE:
            _delete(slots, s, mask)


class KeyTable:
    """Hash -> row, in one open-addressing array that grows by doubling.

    The caller owns rows and their hashes; this class only maps one to the
    other. Not thread-safe; never pickled (rebuilt from the keys).
    """

    def __init__(self, expected: int = 0) -> None:
        n = MIN_SLOTS
        while n < 2 * expected:
            n *= 2
        self._slots = np.zeros((n, 2), dtype=np.int64)
        self._held = 0

    def __len__(self) -> int:
        return self._held

    @property
    def nbytes(self) -> int:
        """Bytes of the slot array."""
        return int(self._slots.nbytes)

    def lookup(self, hashes: I64) -> I64:
        """Row of each hash, -1 where none is held."""
        return self.lookup_counted(hashes)[0]

    def lookup_counted(self, hashes: I64) -> tuple[I64, int]:
        """:meth:`lookup`, and how many of the hashes are not held."""
        out = np.empty(hashes.shape[0], dtype=np.int64)
        return out, int(probe(self._slots, hashes, out))

    def insert(self, hashes: I64, rows: I64) -> None:
        """Hold ``rows[i]`` under ``hashes[i]`` (a later duplicate hash wins)."""
        self._reserve(hashes.shape[0])
        self._held += int(put(self._slots, hashes, rows))

    def insert_absent(
        self,
        hashes: I64,
        first: int,
        ring_hash: I64,
        ring_ts: I64,
        ts: I64,
        head: int = 0,
        cap: int = 0,
    ) -> tuple[npt.NDArray[np.bool_], int, int]:
        """Hold ``first``, ``first + 1``, ... under the hashes not held yet.

        Returns where one was (True), how many, and how many of the oldest
        numbers were forgotten to stay within ``cap`` (see :func:`put_absent`;
        ``head`` is the oldest number held, ``cap`` 0 means no cap). The hash
        and ``ts`` of number ``n`` are written to position ``n & (size - 1)``
        of ``ring_hash`` and ``ring_ts`` (a size that is a power of two, with room).
        """
        more = hashes.shape[0]
        self._reserve(more if cap <= 0 else min(more, max(cap - self._held, 0)))
        added = np.empty(more, dtype=np.bool_)
        k, gone, removed = put_absent(
            self._slots, hashes, first, added, ring_hash, ring_ts, ts, head, cap
        )
        self._held += int(k) - int(removed)
        return added, int(k), int(gone)

    def reserve(self, total: int) -> None:
        """Room for ``total`` hashes in all, so that holding that many never grows the table."""
        if 2 * total > self._slots.shape[0]:
            self._grow(total)

    def remove(self, hashes: I64) -> None:
        """Forget ``hashes``; each must be held."""
        drop(self._slots, hashes)
        self._held -= hashes.shape[0]

    def _reserve(self, more: int) -> None:
        """Room for ``more`` hashes beyond those held (at most half full)."""
        need = self._held + more
        if 2 * need > self._slots.shape[0]:
            self._grow(need)

    def _grow(self, need: int) -> None:
        n = self._slots.shape[0]
        while 2 * need > n:
            n *= 2
        old = self._slots[self._slots[:, 1] != FREE]
        self._slots = np.zeros((n, 2), dtype=np.int64)
        put(self._slots, np.ascontiguousarray(old[:, 0]), np.ascontiguousarray(old[:, 1] - 1))
