"""KeyTable: the compiled hash -> row map against a dict, with crowded probe sequences."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from intentflow.features.keys import MIN_SLOTS, KeyTable

# Hashes share their low bits (the home slot) often, so that probe runs are
# long, wrap around the end of the slot array and are cut by removals.
_HOMES = st.sampled_from([0, 1, 2, MIN_SLOTS - 2, MIN_SLOTS - 1])
_HASHES = st.one_of(
    st.builds(lambda home, high: (high << 20) | home, _HOMES, st.integers(-(2**42), 2**42)),
    st.integers(-(2**63), 2**63 - 1),
)
_OPS = st.lists(
    st.tuples(st.sampled_from(["insert", "remove", "lookup"]), st.lists(_HASHES, max_size=40)),
    max_size=30,
)


def _arr(xs: list[int]) -> np.ndarray:
    return np.array(xs, dtype=np.int64)


@settings(max_examples=150, deadline=None)
@given(_OPS)
def test_key_table_equals_a_dict(ops: list[tuple[str, list[int]]]) -> None:
    table, want = KeyTable(), dict[int, int]()
    next_row = 0
    for op, hashes in ops:
        if op == "insert":
            new = [h for h in dict.fromkeys(hashes) if h not in want]
            rows = list(range(next_row, next_row + len(new)))
            next_row += len(new)
            table.insert(_arr(new), _arr(rows))
            want.update(zip(new, rows, strict=True))
        elif op == "remove":
            gone = [h for h in dict.fromkeys(hashes) if h in want]
            table.remove(_arr(gone))
            for h in gone:
                del want[h]
        else:
            got = table.lookup(_arr(hashes)).tolist()
            assert got == [want.get(h, -1) for h in hashes]
        assert len(table) == len(want)
    everything = list(want) + [h ^ 1 for h in want]
    assert table.lookup(_arr(everything)).tolist() == [want.get(h, -1) for h in everything]


def test_key_table_grows_and_keeps_every_row() -> None:
    rng = np.random.default_rng(3)
    hashes = np.unique(rng.integers(-(2**63), 2**63 - 1, 5 * MIN_SLOTS, dtype=np.int64))
    table = KeyTable()
    for part in np.array_split(np.arange(hashes.size), 7):
        table.insert(hashes[part], part.astype(np.int64))
    assert table.nbytes >= 2 * 16 * hashes.size  # at most half full
    assert table.lookup(hashes).tolist() == list(range(hashes.size))
    table.remove(hashes[::2])
    got = table.lookup(hashes)
    assert (got[::2] == -1).all()
    assert got[1::2].tolist() == list(range(1, hashes.size, 2))


def test_a_repeated_hash_keeps_the_table_count_exact() -> None:
    table = KeyTable()
    table.insert(_arr([5, 5, 7]), _arr([0, 1, 2]))
    assert len(table) == 2
    assert table.lookup(_arr([5, 7])).tolist() == [1, 2]
