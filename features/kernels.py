"""Compiled kernels of the feature engine: pure functions over caller-owned arrays.

No validation and no Python objects here: :mod:`intentflow.features.state`
owns the arrays, checks inputs and calls :func:`update_table` once per batch
and key kind. Every Numba setting lives in :data:`NUMBA_OPTIONS`.

A window query of length W at clock q covers the buckets
``(q - W + 1) // size .. q // size`` of its ring. Window counts are kept as
running totals (``run``), updated when an event lands in the window and
when the window slides past a bucket; sums, minima and maxima are read from
the ring buckets, so float results do not depend on update order.

Layout arrays (built by :mod:`intentflow.features.program`):

* ``tiers[k]``: the bucket sizes (ms) in use;
* ``rings[r] = (tier, slots, cnt_off, sum_off, min_off, max_off)``; the
  rings of signal column ``c`` are ``col_ring_ptr[c]:col_ring_ptr[c+1]``
  (offsets are -1 where the ring keeps no such statistic);
* ``col_lts[c]`` / ``col_lval[c]``: column of the latest timestamp / value
  (-1: not kept); decay slots of ``c`` are ``col_dec_ptr[c]:col_dec_ptr[c+1]``
  with half-lives ``dec_hl`` (ms);
* ``dtabs[k] = (offset, size)``: distinct-value tables;
* ``wq[j] = (ring, m, rem, run_off)`` with ``window_ms - 1 = m * size + rem``:
  window queries evaluated for every event, sorted by ring (those of ring
  ``r`` are ``ring_wq_ptr[r]:ring_wq_ptr[r+1]``); ``run_off`` is the column
  of the query's running count (-1: its ring keeps no count);
* ``outs[f] = (kind, a, b, out_column)`` and ``outx[f]``: output program.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar, cast

import numpy as np
import numpy.typing as npt
from llvmlite import ir
from numba import config, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "EMPTY_TS",
    "LATE_ACCEPTED",
    "LATE_CLAMPED",
    "LATE_DROPPED",
    "NUMBA_OPTIONS",
    "ON_TIME",
    "POLICY_CLAMP",
    "POLICY_DROP",
    "PREFETCH_AHEAD",
    "inlined",
    "kernel",
    "update_table",
]

#: The one place for Numba settings. fastmath stays off: results must equal
#: the reference exactly, and infinities mark empty min/max buckets.
NUMBA_OPTIONS: Final[dict[str, Any]] = {
    "cache": True,
    "nogil": True,
    "fastmath": False,
    "boundscheck": False,
    "error_model": "numpy",
}

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
U32 = npt.NDArray[np.uint32]
I8 = npt.NDArray[np.int8]
_F = TypeVar("_F", bound=Callable[..., Any])


def _options(fn: Callable[..., Any]) -> dict[str, Any]:
    """:data:`NUMBA_OPTIONS`, without the on-disk cache outside the ``intentflow`` package.

    Numba's cache records the name of the module that compiled a kernel, and
    a process that cannot import that module cannot load it. A source folder
    imported as a top-level package (pytest collecting ``features/keys.py``
    from the repository root: docs/layout.md) must not write such entries.
    """
    if fn.__module__.startswith("intentflow."):
        return NUMBA_OPTIONS
    return {**NUMBA_OPTIONS, "cache": False}


def kernel(fn: _F) -> _F:
    """Compile ``fn`` with :data:`NUMBA_OPTIONS` (lazily, on first call)."""
    return cast(_F, njit(**_options(fn))(fn))


def inlined(fn: _F) -> _F:
    """Compile ``fn`` to be inlined into its callers (no per-call array overhead)."""
    return cast(_F, njit(inline="always", **_options(fn))(fn))


#: Events ahead whose state rows :func:`update_table` asks the CPU to fetch early.
PREFETCH_AHEAD: Final = 4
_LINE: Final = 64

if getattr(config, "DISABLE_JIT", False):

    def _prefetch_at(a: Any, row: int, col: int) -> None:
        """A hint only: nothing to do when the kernels run as Python."""

else:

    @intrinsic
    def _prefetch_at(typingctx: Any, a: Any, row: Any, col: Any) -> Any:
        """Hint the CPU to fetch the cache line of ``a[row, col]`` (``llvm.prefetch``)."""
        sig = types.void(a, row, col)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            aty = signature.args[0]
            ary = context.make_array(aty)(context, builder, args[0])
            idx = [context.cast(builder, v, t, types.intp)
                   for v, t in zip(args[1:], signature.args[1:], strict=True)]  # fmt: skip
            ptr = cgutils.get_item_pointer(context, builder, aty, ary, idx)  # type: ignore[no-untyped-call]
            i8p = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
            fn = builder.module.declare_intrinsic("llvm.prefetch", fnty=fnty)
            # write access, high locality, data cache
            builder.call(fn, [builder.bitcast(ptr, i8p), i32(1), i32(3), i32(1)])
            return context.get_dummy_value()

        return sig, codegen


#: Timestamp of "never" (an unused row, an empty slot).
EMPTY_TS: Final = np.iinfo(np.int64).min

POLICY_DROP: Final = 0
POLICY_CLAMP: Final = 1

ON_TIME: Final = 0
LATE_ACCEPTED: Final = 1
LATE_CLAMPED: Final = 2
LATE_DROPPED: Final = 3

K_COUNT: Final = 0
K_SUM: Final = 1
K_MEAN: Final = 2
K_MIN: Final = 3
K_MAX: Final = 4
K_LAST: Final = 5
K_RECENCY: Final = 6
K_DSUM: Final = 7
K_DRATE: Final = 8
K_VELOCITY: Final = 9
K_DISTINCT: Final = 10


@inlined
def _prefetch_row(a: Any, row: int) -> None:
    """Hint the CPU to fetch row ``row`` of the 2-D array ``a``."""
    w = a.shape[1]
    if w > 0:
        for k in range(0, w, max(1, _LINE // a.itemsize)):
            _prefetch_at(a, row, k)
        _prefetch_at(a, row, w - 1)


@inlined
def _clear(row: int, r: int, first: int, steps: int, rings: I64,
           cnt: U32, sm: F64, mn: F64, mx: F64) -> None:  # fmt: skip
    """Empty ``steps`` slots of ring ``r`` from slot ``first`` on (wrapping)."""
    slots = rings[r, 1]
    for stat in range(2, 6):
        off = rings[r, stat]
        if off < 0:
            continue
        slot = first
        for _ in range(steps):
            if stat == 2:
                cnt[row, off + slot] = 0
            elif stat == 3:
                sm[row, off + slot] = 0.0
            elif stat == 4:
                mn[row, off + slot] = np.inf
            else:
                mx[row, off + slot] = -np.inf
            slot += 1
            if slot == slots:
                slot = 0


@inlined
def _firsts(q_b: I64, q_u: I64, rings: I64, wq: I64, out: I64) -> None:
    """First bucket of every window query at the clock whose tier buckets are ``q_b``.

    With W - 1 = m * size + rem and q = q_b * size + q_u, (q - W + 1) // size
    is q_b - m, one less when q_u < rem.
    """
    for j in range(wq.shape[0]):
        k = rings[wq[j, 0], 0]
        out[j] = q_b[k] - wq[j, 1] - (1 if q_u[k] < wq[j, 2] else 0)


@inlined
def _advance(row: int, old: int, new: int, old_f: I64, new_f: I64, old_b: I64, new_b: I64,
             tiers: I64, rings: I64, wq: I64, dec_hl: F64, cnt: U32, sm: F64, mn: F64,
             mx: F64, dec: F64, run: U32) -> None:  # fmt: skip
    """Move a row's clock from ``old`` to ``new``.

    Running counts drop the buckets their windows slide past (``old_f`` /
    ``new_f`` are the first buckets before and after), then the buckets the
    clock enters are emptied and decayed sums decay.
    """
    for j in range(wq.shape[0]):
        ro = wq[j, 3]
        if ro < 0 or new_f[j] <= old_f[j]:
            continue
        r = wq[j, 0]
        if new_f[j] > old_b[rings[r, 0]]:
            run[row, ro] = 0
            continue
        slots = rings[r, 1]
        off = rings[r, 2]
        gone = 0
        for b in range(old_f[j], new_f[j]):
            gone += cnt[row, off + b % slots]
        run[row, ro] -= gone
    for r in range(rings.shape[0]):
        k = rings[r, 0]
        steps = new_b[k] - old_b[k]
        if steps > 0:
            slots = rings[r, 1]
            if steps > slots:
                steps = slots
            _clear(row, r, (old_b[k] + 1) % slots, steps, rings, cnt, sm, mn, mx)
    dt = float(new - old)
    for d in range(dec_hl.shape[0]):
        dec[row, d] *= 2.0 ** (-dt / dec_hl[d])


@inlined
def _add_distinct(row: int, off: int, size: int, h: int, t: int, dh: I64, dts: I64) -> None:
    """Record value hash ``h`` seen at ``t``; when full, replace the oldest value."""
    oldest = -1
    oldest_ts = np.iinfo(np.int64).max
    for k in range(off, off + size):
        ts = dts[row, k]
        if ts == EMPTY_TS:
            dh[row, k] = h
            dts[row, k] = t
            return
        if dh[row, k] == h:
            if t > ts:
                dts[row, k] = t
            return
        if ts < oldest_ts:
            oldest_ts = ts
            oldest = k
    if t > oldest_ts:
        dh[row, oldest] = h
        dts[row, oldest] = t


@inlined
def _apply(row: int, t: int, q: int, t_b: I64, q_b: I64, firsts: I64, c: int, v: float,
           rings: I64, ring_wq_ptr: I64, wq: I64, col_ring_ptr: I64, col_lts: I64,
           col_lval: I64, col_dec_ptr: I64, dec_hl: F64, cnt: U32, sm: F64, mn: F64, mx: F64,
           lts: I64, lval: F64, dec: F64, run: U32) -> None:  # fmt: skip
    """Add value ``v`` of signal column ``c`` at time ``t`` to a row whose clock is ``q``.

    ``t_b[k]`` / ``q_b[k]`` are the bucket indices of ``t`` / ``q`` in tier
    ``k``; ``firsts[j]`` is the first bucket of window query ``j``.
    """
    for r in range(col_ring_ptr[c], col_ring_ptr[c + 1]):
        k = rings[r, 0]
        slots = rings[r, 1]
        b = t_b[k]
        if b > q_b[k] - slots:
            slot = b % slots
            if rings[r, 2] >= 0:
                cnt[row, rings[r, 2] + slot] += 1
                for j in range(ring_wq_ptr[r], ring_wq_ptr[r + 1]):
                    if b >= firsts[j]:
                        run[row, wq[j, 3]] += 1
            if rings[r, 3] >= 0:
                sm[row, rings[r, 3] + slot] += v
            if rings[r, 4] >= 0 and v < mn[row, rings[r, 4] + slot]:
                mn[row, rings[r, 4] + slot] = v
            if rings[r, 5] >= 0 and v > mx[row, rings[r, 5] + slot]:
                mx[row, rings[r, 5] + slot] = v
    k = col_lts[c]
    if k >= 0 and t >= lts[row, k]:
        lts[row, k] = t
        if col_lval[c] >= 0:
            lval[row, col_lval[c]] = v
    for d in range(col_dec_ptr[c], col_dec_ptr[c + 1]):
        dec[row, d] += v * 2.0 ** (-float(q - t) / dec_hl[d])


@inlined
def _ring_sum(a: F64, row: int, off: int, start: int, length: int, slots: int) -> float:
    """Sum of ``length`` ring slots from ``start`` (wrapping) of ``a[row, off:off+slots]``."""
    total = 0.0
    end = start + length
    for k in range(off + start, off + min(end, slots)):
        total += a[row, k]
    for k in range(off, off + end - slots):
        total += a[row, k]
    return total


@inlined
def _ring_min(a: F64, row: int, off: int, start: int, length: int, slots: int) -> float:
    """Minimum over ``length`` ring slots from ``start`` (wrapping)."""
    lo = np.inf
    end = start + length
    for k in range(off + start, off + min(end, slots)):
        lo = min(lo, a[row, k])
    for k in range(off, off + end - slots):
        lo = min(lo, a[row, k])
    return lo


@inlined
def _ring_max(a: F64, row: int, off: int, start: int, length: int, slots: int) -> float:
    """Maximum over ``length`` ring slots from ``start`` (wrapping)."""
    hi = -np.inf
    end = start + length
    for k in range(off + start, off + min(end, slots)):
        hi = max(hi, a[row, k])
    for k in range(off, off + end - slots):
        hi = max(hi, a[row, k])
    return hi


@inlined
def _windows(row: int, q_b: I64, firsts: I64, rings: I64, wq: I64, sm: F64, mn: F64, mx: F64,
             run: U32, w_cnt: I64, w_sum: F64, w_min: F64, w_max: F64) -> None:  # fmt: skip
    """Evaluate every window query of a row (counts from the running totals)."""
    for j in range(wq.shape[0]):
        r = wq[j, 0]
        w_cnt[j] = 0 if wq[j, 3] < 0 else run[row, wq[j, 3]]
        if rings[r, 3] < 0 and rings[r, 4] < 0 and rings[r, 5] < 0:
            continue
        slots = rings[r, 1]
        start = firsts[j] % slots
        length = q_b[rings[r, 0]] - firsts[j] + 1
        w_sum[j] = 0.0 if rings[r, 3] < 0 else _ring_sum(sm, row, rings[r, 3], start, length, slots)
        w_min[j] = (
            np.inf if rings[r, 4] < 0 else _ring_min(mn, row, rings[r, 4], start, length, slots)
        )
        w_max[j] = (
            -np.inf if rings[r, 5] < 0 else _ring_max(mx, row, rings[r, 5], start, length, slots)
        )


@inlined
def _emit(i: int, row: int, q: int, start: int, dtabs: I64, outs: I64, outx: F64,
          recency_cap_ms: int, lts: I64, lval: F64, dec: F64, dts: I64, w_cnt: I64,
          w_sum: F64, w_min: F64, w_max: F64, out: F64) -> None:  # fmt: skip
    """Write the output columns of event ``i`` from row ``row`` at clock ``q``.

    ``start`` is the earliest event time the table has applied: a velocity's
    long window is at most the span since then.
    """
    for f in range(outs.shape[0]):
        kind = outs[f, 0]
        a = outs[f, 1]
        b = outs[f, 2]
        x = 0.0
        if kind == K_COUNT:
            x = w_cnt[a]
        elif kind == K_SUM:
            x = w_sum[a]
        elif kind == K_MEAN:
            if w_cnt[a] > 0:
                x = w_sum[a] / w_cnt[a]
        elif kind == K_MIN:
            if w_min[a] != np.inf:
                x = w_min[a]
        elif kind == K_MAX:
            if w_max[a] != -np.inf:
                x = w_max[a]
        elif kind == K_LAST:
            if lts[row, b] != EMPTY_TS:
                x = lval[row, a]
        elif kind == K_RECENCY:
            age = recency_cap_ms
            if lts[row, a] != EMPTY_TS and q - lts[row, a] < age:
                age = q - lts[row, a]
            x = age / 1000.0
        elif kind == K_DSUM:
            x = dec[row, a]
        elif kind == K_DRATE:
            x = dec[row, a] * outx[f]
        elif kind == K_VELOCITY:
            if w_cnt[b] > 0:
                # (count in S / S') / (count in L / L') with S' = min(S, span) and
                # L' = min(L, span): the span of event time the table has seen
                span = q - start
                if span < outs[f, 4]:
                    x = w_cnt[a] / w_cnt[b]  # S' = L' (1: the key's events are all in S)
                elif span < outs[f, 5]:
                    x = w_cnt[a] / w_cnt[b] * (span / outs[f, 4])
                else:
                    x = w_cnt[a] / w_cnt[b] * outx[f]
        else:  # K_DISTINCT
            lo_ts = q - b + 1
            m = 0
            for k in range(dtabs[a, 0], dtabs[a, 0] + dtabs[a, 1]):
                if dts[row, k] >= lo_ts:
                    m += 1
                elif dts[row, k] == EMPTY_TS:
                    break  # slots fill in order and are never emptied
            x = m
        out[i, outs[f, 3]] = x


@kernel
def update_table(
    # the batch
    ev_row: I64,
    ev_ts: I64,
    ev_route: I64,
    route_ptr: I64,
    route_col: I64,
    v_evt: I64,
    v_col: I64,
    v_val: F64,
    d_evt: I64,
    d_tab: I64,
    d_hash: I64,
    # settings
    lateness_ms: int,
    policy: int,
    recency_cap_ms: int,
    # layout
    tiers: I64,
    rings: I64,
    ring_wq_ptr: I64,
    wq: I64,
    col_ring_ptr: I64,
    col_lts: I64,
    col_lval: I64,
    col_dec_ptr: I64,
    dec_hl: F64,
    dtabs: I64,
    outs: I64,
    outx: F64,
    # state
    clock: I64,
    start: I64,
    cnt: U32,
    sm: F64,
    mn: F64,
    mx: F64,
    lts: I64,
    lval: F64,
    dec: F64,
    dh: I64,
    dts: I64,
    run: U32,
    # results
    out: F64,
    late: I8,
    ahead: int = PREFETCH_AHEAD,
) -> int:
    """Apply a batch of encoded events to one table and write their feature rows.

    Event ``i`` belongs to row ``ev_row[i]`` (-1: no key, the row gets the
    no-data values) at time ``ev_ts[i]``. It contributes 1.0 to the signal
    columns ``route_col[route_ptr[e]:route_ptr[e+1]]`` of its route
    ``e = ev_route[i]``, ``v_val[j]`` to column ``v_col[j]`` for every ``j``
    with ``v_evt[j] == i``, and hash ``d_hash[j]`` to distinct table
    ``d_tab[j]`` for every ``j`` with ``d_evt[j] == i`` (``v_evt`` and
    ``d_evt`` ascend). Events are applied in order; the row written for event
    ``i`` includes it. ``late[i]`` receives ON_TIME, LATE_ACCEPTED,
    LATE_CLAMPED or LATE_DROPPED. While event ``i`` is applied, the CPU is
    asked to fetch the rows of event ``i + ahead`` (0: no prefetching), a
    hint that changes no result. Returns how many events are not ON_TIME.
    """
    nq = wq.shape[0]
    nt = tiers.shape[0]
    w_cnt = np.zeros(nq, dtype=np.int64)
    w_sum = np.zeros(nq)
    w_min = np.zeros(nq)
    w_max = np.zeros(nq)
    firsts = np.zeros(nq, dtype=np.int64)
    old_f = np.zeros(nq, dtype=np.int64)
    q_b = np.zeros(nt, dtype=np.int64)
    q_u = np.zeros(nt, dtype=np.int64)
    o_b = np.zeros(nt, dtype=np.int64)
    o_u = np.zeros(nt, dtype=np.int64)
    t_b = np.zeros(nt, dtype=np.int64)
    vp = 0
    dp = 0
    n_late = 0
    n = ev_row.shape[0]
    clock2 = clock.reshape((clock.shape[0], 1))
    for i in range(n):
        if ahead > 0 and i + ahead < n and ev_row[i + ahead] >= 0:
            # the rows of an event a few ahead: their cache misses overlap this event's work
            nxt = ev_row[i + ahead]
            _prefetch_row(clock2, nxt)
            for a2 in (cnt, run):
                _prefetch_row(a2, nxt)
            for f2 in (sm, mn, mx, lval, dec):
                _prefetch_row(f2, nxt)
            _prefetch_row(lts, nxt)
            per_line = _LINE // dh.itemsize
            for k2 in range(0, min(dh.shape[1], 2 * per_line), per_line):
                # distinct tables fill from the front: their first two lines only
                _prefetch_at(dh, nxt, k2)
                _prefetch_at(dts, nxt, k2)
        v_end = vp
        while v_end < v_evt.shape[0] and v_evt[v_end] == i:
            v_end += 1
        d_end = dp
        while d_end < d_evt.shape[0] and d_evt[d_end] == i:
            d_end += 1
        row = ev_row[i]
        if row < 0:
            for f in range(outs.shape[0]):
                out[i, outs[f, 3]] = recency_cap_ms / 1000.0 if outs[f, 0] == K_RECENCY else 0.0
            late[i] = ON_TIME
            vp = v_end
            dp = d_end
            continue
        t = ev_ts[i]
        q = clock[row]
        status = ON_TIME
        if q == EMPTY_TS or t > q:
            for k in range(nt):
                q_b[k] = t // tiers[k]
                q_u[k] = t - q_b[k] * tiers[k]
            _firsts(q_b, q_u, rings, wq, firsts)
            if q != EMPTY_TS:
                for k in range(nt):
                    o_b[k] = q // tiers[k]
                    o_u[k] = q - o_b[k] * tiers[k]
                _firsts(o_b, o_u, rings, wq, old_f)
                _advance(row, q, t, old_f, firsts, o_b, q_b, tiers, rings, wq, dec_hl,
                         cnt, sm, mn, mx, dec, run)  # fmt: skip
            q = t
            clock[row] = t
        else:
            if t < q - lateness_ms:
                if policy == POLICY_CLAMP:
                    status = LATE_CLAMPED
                    t = q - lateness_ms
                else:
                    status = LATE_DROPPED
            elif t < q:
                status = LATE_ACCEPTED
            for k in range(nt):
                q_b[k] = q // tiers[k]
                q_u[k] = q - q_b[k] * tiers[k]
            _firsts(q_b, q_u, rings, wq, firsts)
        late[i] = status
        if status != ON_TIME:
            n_late += 1
        if status != LATE_DROPPED:
            if start[0] == EMPTY_TS or t < start[0]:
                start[0] = t
            for k in range(nt):
                t_b[k] = q_b[k] if t == q else t // tiers[k]
            u0 = route_ptr[ev_route[i]]
            units = route_ptr[ev_route[i] + 1] - u0
            for j in range(units + v_end - vp):
                if j < units:
                    c = route_col[u0 + j]
                    v = 1.0
                else:
                    c = v_col[vp + j - units]
                    v = v_val[vp + j - units]
                _apply(row, t, q, t_b, q_b, firsts, c, v, rings, ring_wq_ptr, wq, col_ring_ptr,
                       col_lts, col_lval, col_dec_ptr, dec_hl, cnt, sm, mn, mx, lts, lval, dec,
                       run)  # fmt: skip
            for j in range(dp, d_end):
                k = d_tab[j]
                _add_distinct(row, dtabs[k, 0], dtabs[k, 1], d_hash[j], t, dh, dts)
        vp = v_end
        dp = d_end
        _windows(row, q_b, firsts, rings, wq, sm, mn, mx, run, w_cnt, w_sum, w_min, w_max)
        _emit(i, row, q, start[0], dtabs, outs, outx, recency_cap_ms, lts, lval, dec, dts,
              w_cnt, w_sum, w_min, w_max, out)  # fmt: skip
    return n_late
