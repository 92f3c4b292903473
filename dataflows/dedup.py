"""Event ids seen by a shard, in compact arrays: the de-duplication window.

An id is kept as a 64-bit hash (XXH3-64 of its UTF-8 text under
:data:`SEED`) in a ring of ``(hash, ts_ms)`` in the order ids were first
seen, indexed by a compiled hash table (:class:`~intentflow.features.keys.KeyTable`).
That is about 48 bytes per id at a million ids (16 in the ring, 32 in the
table at most half full), against about 130 for a ``dict`` of id strings and
integers, and a snapshot stores 16 bytes per id whatever the id's length.

Two different ids are taken for one only if their hashes collide: about
``n**2 / 2**65`` for ``n`` ids held (3e-8 at a million), and then the later
event is counted as a duplicate. docs/contracts.md, "Duplicates", says so.

>>> s = SeenIds()
>>> s.admit(["a", "b", "a"], [1, 2, 3]).tolist()   # the second "a" repeats the first
[True, True, False]
>>> s.admit(["b", "c"], [4, 5]).tolist()
[False, True]
>>> s.trim(cutoff_ms=2, max_ids=10), len(s)   # ids first seen before ts 2 are forgotten
(1, 2)
>>> s.admit(["a"], [6]).tolist()
[True]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from intentflow.features.encode import str_hash_array
from intentflow.features.keys import KeyTable

__all__ = ["SEED", "SeenIds", "id_hashes"]

#: XXH3 seed of event-id hashes (fixed: snapshots store the hashes).
SEED: Final = 0x5EE1D
_MIN_RING: Final = 1024
#: Ids whose times :meth:`SeenIds.trim` reads first (the chunk doubles while all are old).
_TRIM_STEP: Final = 4096

I64 = npt.NDArray[np.int64]


def _ring_size(ids: int) -> int:
    """The ring length for ``ids`` ids: a power of two, at least :data:`_MIN_RING`.

    >>> _ring_size(0), _ring_size(1024), _ring_size(1025), _ring_size(1_000_000)
    (1024, 1024, 2048, 1048576)
    """
    return max(_MIN_RING, 1 << max(0, ids - 1).bit_length())


def id_hashes(ids: Sequence[str]) -> I64:
    """The 64-bit hash of each id (signed), as stored by :class:`SeenIds`."""
    return str_hash_array(ids, SEED)


class SeenIds:
    """Event ids first seen in order, forgotten oldest first (see the module docstring).

    Positions in the ring are absolute sequence numbers: the id first seen
    n-th has number n, and the table maps its hash to n.

    With ``max_ids`` > 0 at most that many ids are held: a new id at the cap
    makes the oldest one forgotten, event by event, so the result does not
    depend on how events are batched. The ring and the table are then
    allocated for the cap at once, zeroed by the operating system: a page
    takes memory when an id first lands on it, and the window never stops
    the shard to grow (a growth step at 65,536 ids took 47 to 150 ms, most
    of it the first touch of the new table's pages). Without a cap the
    arrays start small and double.
    """

    def __init__(self, max_ids: int = 0) -> None:
        self._cap = max(0, max_ids)
        ring = _ring_size(self._cap)  # _MIN_RING without a cap
        self._table = KeyTable(self._cap)
        self._hash = np.zeros(ring, dtype=np.int64)
        self._ts = np.zeros(ring, dtype=np.int64)
        self._head = 0  # number of the oldest id held
        self._tail = 0  # number the next new id gets

    @property
    def nbytes(self) -> int:
        """Bytes of the ring and the table."""
        return int(self._hash.nbytes + self._ts.nbytes + self._table.nbytes)

    @property
    def max_ids(self) -> int:
        """The cap on ids held (0: none)."""
        return self._cap

    def limit(self, max_ids: int) -> int:
        """Set the cap (0: none); forgets the oldest ids above it. Returns how many.

        A cap larger than the arrays gets its arrays now (at restore), not while
        events flow.
        """
        self._cap = max(0, max_ids)
        if self._cap and len(self) > self._cap:
            return self._forget(len(self) - self._cap)
        if self._cap:
            self._reserve(self._cap)
        return 0

    def __len__(self) -> int:
        return self._tail - self._head

    def admit(self, ids: Sequence[str], ts_ms: Sequence[int]) -> npt.NDArray[np.bool_]:
        """Record ``ids`` seen at ``ts_ms``; True where an id is new.

        New: not held, and not an earlier item of ``ids`` (only the first
        of a repeated id is recorded, with its time).
        """
        n = len(ids)
        if n == 0:
            return np.zeros(0, dtype=np.bool_)
        h = id_hashes(ids)
        cap = self._cap
        self._reserve(len(self) + n if not cap else min(len(self) + n, cap))
        ts = np.fromiter(ts_ms, dtype=np.int64, count=n)
        fresh, k, gone = self._table.insert_absent(
            h, self._tail, self._hash, self._ts, ts, self._head, cap
        )
        self._tail += k
        self._head += gone
        return fresh

    def trim(self, cutoff_ms: int, max_ids: int) -> int:
        """Forget the oldest ids while more than ``max_ids`` are held or the oldest is too old.

        Too old: seen before ``cutoff_ms``. Ids are visited in order of first
        sight (about event time), so an old id behind a newer one waits for
        it. Returns how many were forgotten.
        """
        held = len(self)
        k = min(max(held - max_ids, 0), held)  # the excess goes whatever its age
        mask = self._hash.shape[0] - 1
        step = _TRIM_STEP
        while k < held:  # then up to the first id that is recent enough, a chunk at a time
            pos = np.arange(self._head + k, self._head + min(held, k + step)) & mask
            recent = np.flatnonzero(self._ts[pos] >= cutoff_ms)
            if recent.size:
                k += int(recent[0])
                break
            k += pos.shape[0]
            step *= 2
        return self._forget(k)

    def _forget(self, k: int) -> int:
        """Forget the ``k`` oldest ids held; returns ``k``."""
        if k == 0:
            return 0
        mask = self._hash.shape[0] - 1
        gone_seq = np.arange(self._head, self._head + k, dtype=np.int64)
        gone_h = self._hash[gone_seq & mask]
        # only entries still mapped to these numbers (a colliding later id took the mapping over)
        mine = self._table.lookup(gone_h) == gone_seq
        self._table.remove(np.ascontiguousarray(gone_h[mine]))
        self._head += k
        return k

    def items(self) -> list[tuple[int, int]]:
        """``(hash, ts_ms)`` of every id held, oldest first."""
        _, pos = self._order()
        return list(zip(self._hash[pos].tolist(), self._ts[pos].tolist(), strict=True))

    def _order(self) -> tuple[I64, I64]:
        """Numbers of the ids held, oldest first, and their ring positions."""
        seq = np.arange(self._head, self._tail, dtype=np.int64)
        return seq, seq & (self._hash.shape[0] - 1)

    def _reserve(self, need: int) -> None:
        """A ring with room for ``need`` ids (and, with a cap raised by :meth:`limit`, a
        ring and table for the new cap at once)."""
        cap = self._hash.shape[0]
        if need <= cap:
            return
        if self._cap:
            need = max(need, self._cap)
            self._table.reserve(need)
        new_cap = _ring_size(need)
        seq, old = self._order()
        new = seq & (new_cap - 1)
        h, ts = np.zeros(new_cap, dtype=np.int64), np.zeros(new_cap, dtype=np.int64)
        h[new], ts[new] = self._hash[old], self._ts[old]
        self._hash, self._ts = h, ts

    def __getstate__(self) -> dict[str, Any]:
        _, pos = self._order()
        return {"hashes": self._hash[pos], "ts": self._ts[pos], "max_ids": self._cap}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state.get("max_ids", 0))  # type: ignore[misc]
        hashes = np.ascontiguousarray(state["hashes"], dtype=np.int64)
        ts = np.ascontiguousarray(state["ts"], dtype=np.int64)
        k = int(hashes.shape[0])
        if k:
            self._reserve(k)
            self._hash[:k], self._ts[:k] = hashes, ts
            self._table.insert(hashes, np.arange(k, dtype=np.int64))
            self._tail = k
