"""The de-duplication window against a plain dict, the way it used to be kept."""

from __future__ import annotations

import os
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intentflow.dataflows.dedup import SeenIds, id_hashes


class _DictSeen:
    """Reference: id -> first ts, insertion-ordered, trimmed from the front.

    With ``max_ids``, a new id at the cap first forgets the oldest one.
    """

    def __init__(self, max_ids: int = 0) -> None:
        self.seen: dict[str, int] = {}
        self.max_ids = max_ids

    def admit(self, ids: list[str], ts: list[int]) -> list[bool]:
        out = []
        for i, t in zip(ids, ts, strict=True):
            if i in self.seen:
                out.append(False)
            else:
                if self.max_ids and len(self.seen) >= self.max_ids:
                    del self.seen[next(iter(self.seen))]
                self.seen[i] = t
                out.append(True)
        return out

    def trim(self, cutoff: int, max_ids: int) -> int:
        excess = len(self.seen) - max_ids
        drop = []
        for eid, t in self.seen.items():
            if excess > 0 or t < cutoff:
                drop.append(eid)
                excess -= 1
            else:
                break
        for eid in drop:
            del self.seen[eid]
        return len(drop)


_ids = st.text(alphabet="abcdefgh", min_size=1, max_size=3)
_op = st.one_of(
    st.tuples(st.just("admit"), st.lists(st.tuples(_ids, st.integers(0, 100)), max_size=40)),
    st.tuples(st.just("trim"), st.tuples(st.integers(0, 100), st.integers(0, 30))),
    st.tuples(st.just("pickle"), st.just(None)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_op, max_size=30), st.sampled_from([0, 0, 1, 2, 5, 12]))
def test_matches_a_dict_of_ids(ops: list[tuple[str, object]], cap: int) -> None:
    got, ref = SeenIds(cap), _DictSeen(cap)
    for kind, arg in ops:
        if kind == "admit":
            items = list(arg)  # type: ignore[call-overload]
            ids = [i for i, _ in items]
            ts = [t for _, t in items]
            assert got.admit(ids, ts).tolist() == ref.admit(ids, ts)
        elif kind == "trim":
            cutoff, max_ids = arg  # type: ignore[misc]
            assert got.trim(cutoff, max_ids) == ref.trim(cutoff, max_ids)
        else:
            got = pickle.loads(pickle.dumps(got))
        assert len(got) == len(ref.seen)
        expected = list(zip(id_hashes(list(ref.seen)).tolist(), ref.seen.values(), strict=True))
        assert got.items() == expected


def test_ring_and_table_grow_past_their_first_size() -> None:
    s = SeenIds()
    ids = [f"evt-{i}" for i in range(5000)]
    assert s.admit(ids, list(range(5000))).all()
    assert not s.admit(ids[::7], [0] * len(ids[::7])).any()
    assert s.trim(cutoff_ms=4000, max_ids=10_000) == 4000
    assert s.admit(["evt-10", "evt-4999"], [1, 2]).tolist() == [True, False]
    restored = pickle.loads(pickle.dumps(s))
    assert restored.items() == s.items()
    assert restored.admit(["evt-4998", "evt-11"], [3, 4]).tolist() == [False, True]


def test_trim_reads_past_its_first_chunk() -> None:
    """Trims longer than one chunk of times (4,096) agree with the dict too."""
    got, ref = SeenIds(), _DictSeen()
    ids = [f"e{i}" for i in range(30_000)]
    ts = [i // 3 for i in range(30_000)]  # non-decreasing, with repeats
    ts[20_000] = 9_999  # an id with a later time holds back those behind it
    assert got.admit(ids, ts).tolist() == ref.admit(ids, ts)
    for cutoff, max_ids in ((50, 40_000), (2_000, 40_000), (8_000, 40_000), (0, 5_000)):
        assert got.trim(cutoff, max_ids) == ref.trim(cutoff, max_ids)
        assert got.items() == list(zip(id_hashes(list(ref.seen)).tolist(), ref.seen.values(),
                                       strict=True))  # fmt: skip
    assert len(got) == 5_000
    assert got.trim(10**9, 10) == ref.trim(10**9, 10) == 5_000


def test_ids_that_are_not_valid_utf8_are_hashed_too() -> None:
    s = SeenIds()
    assert s.admit(["a\udc80", "a\udc80", "a"], [1, 2, 3]).tolist() == [True, False, True]


def test_a_snapshot_stores_sixteen_bytes_per_id() -> None:
    s = SeenIds()
    s.admit([f"https://example.com/events/{i:040d}" for i in range(10_000)], list(range(10_000)))
    assert len(pickle.dumps(s)) < 16 * 10_000 + 1000


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(_ids, st.integers(0, 100)), max_size=120),
    st.lists(st.integers(1, 40), min_size=1, max_size=10),
    st.integers(1, 15),
)
def test_the_cap_does_not_depend_on_batch_boundaries(
    items: list[tuple[str, int]], cuts: list[int], cap: int
) -> None:
    ids, ts = [i for i, _ in items], [t for _, t in items]
    whole = SeenIds(cap)
    fresh = whole.admit(ids, ts).tolist()
    split, got, at = SeenIds(cap), [], 0
    while at < len(ids):
        n = cuts[len(got) % len(cuts)]
        got.append(split.admit(ids[at : at + n], ts[at : at + n]).tolist())
        at += n
    assert [x for part in got for x in part] == fresh
    assert split.items() == whole.items()
    assert len(whole) <= cap


def test_a_capped_window_is_sized_for_its_cap_and_never_grows() -> None:
    """The arrays are allocated for the cap at once; an uncapped window doubles."""
    cap = 300_000
    s, ref = SeenIds(cap), _DictSeen(cap)
    sizes = []
    for b in range(400):
        ids = [f"evt-{b}-{i}" for i in range(1000)]
        assert s.admit(ids, [b] * 1000).all()
        ref.admit(ids, [b] * 1000)
        sizes.append(s.nbytes)
    assert len(s) == cap
    assert len(set(sizes)) == 1
    # the oldest went first: the first 100 batches are forgotten, the rest held
    assert not s.admit(["evt-399-0", "evt-100-0"], [0, 0]).any()
    assert s.admit(["evt-99-999"], [0]).tolist() == [True]
    restored = pickle.loads(pickle.dumps(s))
    assert restored.max_ids == cap
    assert len(restored) == cap
    assert restored.nbytes == s.nbytes
    uncapped = SeenIds()
    grown = []
    for b in range(70):
        uncapped.admit([f"evt-{b}-{i}" for i in range(1000)], [b] * 1000)
        grown.append(uncapped.nbytes)
    assert len(set(grown)) > 3
    assert grown[0] < sizes[0] // 100


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_a_large_cap_takes_memory_only_as_ids_arrive() -> None:
    """Pages of the arrays sized for the cap are untouched until ids land on them.

    Ten ids touch at most a dozen pages, 2 MB each where numpy asks for huge pages.
    """
    before = _resident_bytes()
    s = SeenIds(20_000_000)  # about 1.6 GB of ring and table if all of it were touched
    s.admit([f"e{i}" for i in range(10)], list(range(10)))
    assert s.nbytes > 1_500_000_000
    assert _resident_bytes() - before < 100_000_000


def test_raising_the_cap_sizes_the_arrays_at_once() -> None:
    s = SeenIds(1000)
    s.admit([f"e{i}" for i in range(10)], list(range(10)))
    small = s.nbytes
    assert s.limit(100_000) == 0
    raised = s.nbytes
    assert raised > 50 * small
    s.admit([f"f{i}" for i in range(50_000)], [20] * 50_000)
    assert s.nbytes == raised
    assert len(s) == 50_010


def test_limit_forgets_the_oldest_above_a_new_cap() -> None:
    s = SeenIds()
    s.admit([f"e{i}" for i in range(10)], list(range(10)))
    assert s.limit(4) == 6
    assert [t for _, t in s.items()] == [6, 7, 8, 9]
    # e9 is held; e5 (forgotten) and e10 are new, and each forgets the oldest held
    assert s.admit(["e9", "e5", "e10"], [0, 0, 10]).tolist() == [False, True, True]
    assert [t for _, t in s.items()] == [8, 9, 0, 10]
