"""Seeded synthetic B2B buyer journeys: the engine's demo, test and benchmark input.

Each contact (``c-000123``) belongs to an account (``a-00042``) and moves through
hidden intent stages (cold, researching, evaluating, ready, customer, churn risk).
The stage drives what the contact does: ready contacts read ``/pricing`` for
longer, request demos, ask for quotes in chat and add plans to their cart, and
most of them ``purchase`` a while *after* those signals. Purchases are the
ground truth (:meth:`BuyerJourneyGenerator.conversions`).

Events are produced in fixed internal blocks with vectorised numpy draws, so
the item sequence depends only on the config, never on how it is requested:

>>> gen = BuyerJourneyGenerator(GeneratorConfig(entities=50))
>>> first = gen.next_events(3)
>>> [e["type"] for e in first] == [e["type"] for e in iter_events(GeneratorConfig(entities=50), 3)]
True
>>> snap = gen.snapshot()
>>> again = BuyerJourneyGenerator.restore(GeneratorConfig(entities=50), snap)
>>> gen.next_events(2) == again.next_events(2)
True

See ``docs/generator.md`` for the model, the parameters and the snapshot size.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from intentflow.errors import ConfigError, SnapshotMismatchError

__all__ = [
    "GENERATED_MAX_BYTES",
    "STAGE_NAMES",
    "BuyerJourneyGenerator",
    "GeneratorConfig",
    "GeneratorSnapshot",
    "iter_events",
]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
S8 = npt.NDArray[np.int8]

#: Hidden intent stages; ``ready_buy`` and ``ready_lost`` look alike from outside.
STAGE_NAMES: Final = (
    "cold",
    "researching",
    "evaluating",
    "ready_buy",
    "ready_lost",
    "customer",
    "churn_risk",
)
COLD, RESEARCH, EVAL, READY_BUY, READY_LOST, CUSTOMER, CHURN = range(7)

_SCHEMA_VERSION: Final = 1
_BLOCK: Final = 1024  # base events per internal block; part of the item sequence
_SIGNAL: Final = 1  # flag bit: a buying signal since the stage was entered
_CONVERTED: Final = 2  # flag bit: first purchase already recorded
_MAX_I64: Final = np.iinfo(np.int64).max

# Event types drawn from the stage mix, then the scheduled and rare ones.
PV, CLICK, EOPEN, ECLICK, CHAT, FORM, CRM, CART, PAYMENT, TICKET, MENTION = range(11)
PURCHASE, UNKNOWN = 11, 12
_TYPE_NAMES: Final = (
    "page_view",
    "click",
    "email_open",
    "email_click",
    "chat_message",
    "form_submit",
    "crm_activity",
    "cart_add",
    "payment",
    "ticket",
    "mention",
    "purchase",
    "webinar_join",
    "survey_response",
    "app_install",
)
# Rows: stages. Columns: the 11 drawable types above.
_TYPE_MIX: Final = (
    (46, 10, 30, 4, 1.0, 4.0, 2.5, 0.2, 0, 0, 2.3),
    (55, 12, 15, 7, 3.0, 4.0, 3.0, 0.6, 0, 0, 0.5),
    (52, 12, 10, 7, 7.0, 5.0, 5.0, 1.5, 0, 0, 1.0),
    (48, 10, 7, 7, 10.0, 7.0, 7.0, 3.5, 0, 0, 0.5),
    (50, 10, 8, 7, 10.0, 5.5, 6.0, 2.0, 0, 0, 1.5),
    (42, 10, 15, 5, 6.0, 1.5, 4.0, 0.4, 6, 7, 2.5),
    (33, 8, 10, 3, 12.0, 1.5, 6.0, 0.2, 9, 12, 5.3),
)
#: Relative event rate of a contact per stage (high intent is busier).
_ACTIVITY: Final = (0.35, 1.0, 1.6, 2.6, 2.2, 0.7, 1.0)
# Probability that a contact who becomes ready will buy: base + slope * propensity.
_BUY_BASE: Final = 0.25
_BUY_SLOPE: Final = 0.5
# Chance per stage that a cart_add becomes a quick impulse (or expansion) purchase.
_IMPULSE: Final = (0.1, 0.1, 0.1, 0.0, 0.0, 0.3, 0.0)
_INITIAL_STAGE: Final = (0.50, 0.22, 0.075, 0.026, 0.0, 0.146, 0.033)
# Mean stage holding time in units of journey_scale_s (ready_buy: purchase delay).
_HOLD: Final = (2.5, 1.0, 0.6, 0.4, 0.5, 3.0, 1.5)

_CATEGORIES: Final = ("pricing", "product", "blog", "docs", "case_study", "careers", "home")
_PAGES: Final = (
    ("/pricing", "/pricing/enterprise", "/pricing/compare", "/pricing/faq"),
    (
        "/product",
        "/product/analytics",
        "/product/integrations",
        "/product/security",
        "/product/api",
        "/product/automation",
    ),
    (
        "/blog/what-is-intent-data",
        "/blog/b2b-buyer-journey-2026",
        "/blog/real-time-scoring",
        "/blog/release-notes-january",
        "/blog/pipeline-hygiene",
    ),
    (
        "/docs/getting-started",
        "/docs/api/events",
        "/docs/integrations/salesforce",
        "/docs/sso",
        "/docs/billing",
        "/docs/troubleshooting",
    ),
    (
        "/case-studies/acme-logistics",
        "/case-studies/globex-retail",
        "/case-studies/initech-saas",
        "/case-studies/umbrella-health",
    ),
    ("/careers", "/careers/engineering", "/careers/sales"),
    ("/", "/about", "/contact"),
)
_PAGE_LIST: Final = tuple(p for pages in _PAGES for p in pages)
_DWELL_MEDIAN_S: Final = (25.0, 35.0, 60.0, 70.0, 50.0, 30.0, 10.0)
_DWELL_STAGE: Final = (0.6, 1.0, 1.4, 2.2, 1.7, 1.0, 1.1)
_CLICKS: Final = (
    "cta_pricing",
    "cta_demo",
    "nav_docs",
    "nav_blog",
    "signup_button",
    "download_whitepaper",
)
_CAMPAIGNS: Final = (
    "newsletter-jan",
    "product-launch",
    "webinar-invite",
    "case-study-digest",
    "pricing-update",
    "sales-followup",
    "renewal-reminder",
)
_FORMS: Final = ("demo_request", "contact_sales", "newsletter", "trial_signup")
_CRM: Final = ("call", "meeting", "note")
_PLANS: Final = (
    ("plan-starter", 1200.0),
    ("plan-team", 6000.0),
    ("plan-business", 18000.0),
    ("plan-enterprise", 48000.0),
)
_ADDONS: Final = (("addon-seats-10", 1500.0), ("addon-sso", 3000.0))
_SEVERITIES: Final = ("low", "medium", "high", "critical")
_CHANNELS: Final = ("twitter", "linkedin", "reddit", "g2", "news")
# Chat classes: buying, question, objection, support. [class][locale] -> texts.
# Chinese texts keep their native full-width punctuation.
_CHAT_TEXTS: Final[tuple[tuple[tuple[str, ...], ...], ...]] = (
    (
        (
            "can we get a quote for {n} seats",
            "what does the enterprise plan cost for {n} users?",
            "we want to start a pilot next week",
            "can you send over the contract?",
            "do you offer annual billing?",
            "who can I talk to about pricing?",
        ),
        ("价格", "{n}个席位的报价是多少？", "我们想下周开始试用", "可以发合同吗？"),
    ),
    (
        (
            "does it integrate with salesforce?",
            "is there an API for events?",
            "how long does onboarding take?",
            "do you support SSO?",
        ),
        ("支持单点登录吗？", "有API吗？"),
    ),
    (
        (
            "too expensive",
            "we are looking at an alternative",
            "your competitor is cheaper",
            "not sure we have budget this quarter",
        ),
        ("太贵了", "有没有替代方案", "价格太高了"),
    ),
    (
        ("the dashboard is slow today", "how do I add a new user?", "export to csv fails"),
        ("导出失败了", "仪表盘很慢"),
    ),
)
_TICKET_TEXTS: Final = (
    (
        "cannot log in",
        "dashboard loads slowly",
        "data export fails",
        "billing question",
        "SSO setup broken",
        "API returns 500 errors",
    ),
    ("数据同步失败", "无法登录", "账单问题"),
)
# Mention classes: positive, neutral, negative. [class][locale] -> texts.
_MENTION_TEXTS: Final[tuple[tuple[tuple[str, ...], ...], ...]] = (
    (("great onboarding experience", "support was quick to help"), ("客服很专业",)),
    (
        ("anyone using this for lead scoring?", "saw their talk at a conference"),
        ("有人用过吗？",),
    ),
    (("considering switching, too pricey", "outage again today"), ("太贵了", "有没有替代方案")),
)
_MENTION_SENTIMENT: Final = ((0.3, 0.6), (-0.2, 0.4), (-0.9, 0.6))  # (low, width)
_WEBINARS: Final = ("scaling-intent-data", "pipeline-review-live", "product-tour")

# Option mixes per (type, stage); the option index is "sub".
_SUB_MIX: Final[dict[int, tuple[tuple[float, ...], ...]]] = {
    PV: (
        (3, 10, 40, 5, 4, 10, 28),
        (8, 25, 30, 15, 10, 2, 10),
        (22, 30, 8, 15, 17, 1, 7),
        (40, 25, 4, 10, 14, 1, 6),
        (33, 25, 7, 10, 14, 3, 8),
        (4, 15, 12, 55, 4, 2, 8),
        (20, 10, 8, 40, 5, 7, 10),
    ),
    CLICK: (
        (5, 2, 10, 50, 3, 30),
        (12, 6, 25, 25, 12, 20),
        (25, 20, 20, 10, 15, 10),
        (40, 30, 10, 5, 10, 5),
        (35, 20, 15, 10, 10, 10),
        (5, 2, 70, 15, 3, 5),
        (20, 3, 60, 10, 2, 5),
    ),
    EOPEN: (
        (40, 20, 20, 15, 5, 0, 0),
        (25, 25, 20, 20, 8, 2, 0),
        (10, 15, 15, 20, 15, 25, 0),
        (5, 10, 10, 15, 20, 40, 0),
        (8, 12, 12, 18, 20, 30, 0),
        (20, 20, 15, 5, 5, 5, 30),
        (15, 10, 10, 5, 10, 10, 40),
    ),
    CHAT: (
        (5, 60, 15, 20),
        (12, 65, 15, 8),
        (35, 40, 20, 5),
        (60, 20, 15, 5),
        (30, 20, 45, 5),
        (10, 25, 10, 55),
        (5, 10, 50, 35),
    ),
    FORM: (
        (2, 2, 90, 6),
        (6, 4, 60, 30),
        (30, 20, 15, 35),
        (45, 35, 5, 15),
        (35, 25, 15, 25),
        (5, 45, 45, 5),
        (2, 30, 60, 8),
    ),
    CRM: (
        (20, 2, 78),
        (30, 5, 65),
        (35, 25, 40),
        (35, 40, 25),
        (35, 30, 35),
        (30, 20, 50),
        (45, 25, 30),
    ),
    PAYMENT: ((95, 5),) * 5 + ((90, 10), (55, 45)),
    TICKET: ((45, 35, 15, 5),) * 6 + ((15, 35, 35, 15),),
    MENTION: (
        (30, 50, 20),
        (30, 55, 15),
        (30, 50, 20),
        (35, 50, 15),
        (20, 45, 35),
        (50, 35, 15),
        (10, 30, 60),
    ),
}
_SUB_MIX[ECLICK] = _SUB_MIX[EOPEN]
_N_POISON_KINDS: Final = 13


def _cdf(weights: tuple[float, ...], width: int) -> list[float]:
    total = float(sum(weights))
    acc, out = 0.0, []
    for w in weights:
        acc += w / total
        out.append(acc)
    out[-1] = 1.0
    return out + [1.0] * (width - len(out))


@dataclass(frozen=True)
class GeneratorConfig:
    """What to simulate. Every field is validated; errors name the field.

    ``start_ms=None`` starts the simulated clock at the current wall time
    (live demos); any other value makes runs reproducible byte for byte.
    """

    seed: int = 7
    entities: int = 2000
    accounts: int | None = None
    start_ms: int | None = 1767225600000  # 2026-01-01T00:00:00Z
    events_per_second: float = 1000.0
    journey_scale_s: float = 120.0
    out_of_order_fraction: float = 0.0
    max_disorder_ms: int = 0
    duplicate_fraction: float = 0.0
    poison_fraction: float = 0.0
    unknown_type_fraction: float = 0.002

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            value = getattr(self, name)
            return ConfigError(f"generator.{name}={value!r}: {why}")

        for name in ("seed", "entities", "max_disorder_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise bad(name, "must be a non-negative integer")
        if self.entities < 1:
            raise bad("entities", "must be at least 1")
        if self.accounts is not None and (
            not isinstance(self.accounts, int) or not 1 <= self.accounts <= self.entities
        ):
            raise bad("accounts", "must be None or an integer between 1 and entities")
        if self.start_ms is not None and (not isinstance(self.start_ms, int) or self.start_ms < 0):
            raise bad("start_ms", "must be None (wall time) or a non-negative epoch-ms integer")
        for name in ("events_per_second", "journey_scale_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise bad(name, "must be a positive finite number")
        for name, high in (
            ("out_of_order_fraction", 1.0),
            ("duplicate_fraction", 0.5),
            ("poison_fraction", 0.9),
            ("unknown_type_fraction", 0.5),
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 <= value <= high:
                raise bad(name, f"must be a number between 0 and {high}")
        if self.out_of_order_fraction > 0 and self.max_disorder_ms < 1:
            raise bad("max_disorder_ms", "must be >= 1 when out_of_order_fraction > 0")

    @property
    def n_accounts(self) -> int:
        """The account count actually used (``entities // 4`` when not given)."""
        return self.accounts if self.accounts is not None else max(1, self.entities // 4)


@dataclass(frozen=True)
class GeneratorSnapshot:
    """Resume point of a generator: block-start state plus the offset into the block.

    Per-entity arrays are stored as raw bytes (stage, flags, next transition
    time as int32 or int64 offsets); conversions are kept sparse.
    """

    schema_version: int
    config_key: tuple[Any, ...]
    start_ms: int
    clock_ms: float
    seq: int
    position: int
    rng_state: tuple[int, int, int, int]
    poison_rng_state: tuple[int, int, int, int]
    stage: bytes
    flags: bytes
    next_base_ms: int
    next_dtype: str
    next_delta: bytes
    conv_idx: bytes
    conv_ts: bytes
    valid_offset: int
    poison_offset: int


#: Every valid event the generator makes encodes to fewer bytes than this (about
#: 200 at most; tests/test_generator.py checks it). A source may hand them over
#: decoded when the payload size limit is at least this.
GENERATED_MAX_BYTES: Final = 1024

_SEP: Final = b',{"event_id":'


def _encode_many(events: list[dict[str, Any]]) -> list[bytes]:
    """``[orjson.dumps(e) for e in events]`` in one call: dump the list, split it.

    Every event starts with its ``event_id`` key and props hold no objects, so
    ``,{"event_id":`` only occurs between events (quotes inside strings are
    escaped). The count is checked; any surprise falls back to one call per event.
    """
    if not events:
        return []
    parts = orjson.dumps(events)[1:-1].split(_SEP)
    if len(parts) != len(events):
        return [orjson.dumps(e) for e in events]
    return [parts[0], *[_SEP[1:] + p for p in parts[1:]]]


def _rng_state(rng: np.random.Generator) -> tuple[int, int, int, int]:
    st = rng.bit_generator.state
    return (st["state"]["state"], st["state"]["inc"], st["has_uint32"], st["uinteger"])


def _set_rng_state(rng: np.random.Generator, st: tuple[int, int, int, int]) -> None:
    rng.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": st[0], "inc": st[1]},
        "has_uint32": st[2],
        "uinteger": st[3],
    }


@dataclass
class _Block:
    events: list[dict[str, Any]]
    stages: S8  # hidden stage of each event (for evaluation scripts)
    poison_counts: list[int] | None  # poison items emitted before each event
    poison_first: list[int]  # index of each event's first poison item in poison_kinds
    poison_kinds: list[int]
    conversions: list[tuple[int, int, int]]  # (event index, entity, ts)
    encoded: list[bytes] | None = None  # events[encoded_from:] as JSON, made on demand
    encoded_from: int = 0


class BuyerJourneyGenerator:
    """Deterministic stream of buyer-journey events; all state is owned here."""

    def __init__(self, config: GeneratorConfig) -> None:
        self._config = config
        self._start_ms = int(time.time() * 1000) if config.start_ms is None else config.start_ms
        self._scale_ms = config.journey_scale_s * 1000.0
        self._mean_gap_ms = 1000.0 / config.events_per_second
        self._build_static()
        self._rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([config.seed, 2])))
        self._poison_rng = np.random.Generator(
            np.random.PCG64(np.random.SeedSequence([config.seed, 3]))
        )
        self._init_dynamic()
        self._block: _Block | None = None
        self._vpos = 0  # next event index in the block
        self._ppos = 0  # poison items already emitted before that event
        self._position = 0
        self._block_start: tuple[Any, ...] | None = None
        self._undo: tuple[I64, S8, npt.NDArray[np.uint8], I64] | None = None

    # ----------------------------------------------------------------- set-up
    def _build_static(self) -> None:
        cfg = self._config
        n, n_acc = cfg.entities, cfg.n_accounts
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([cfg.seed, 1])))
        # Every account gets one contact; the rest join accounts of skewed size.
        acc_w = rng.lognormal(0.0, 1.0, n_acc)
        rest = rng.choice(n_acc, size=n - n_acc, p=acc_w / acc_w.sum())
        account = np.concatenate([rng.permutation(n_acc), rest]).astype(np.int64)
        account = account[rng.permutation(n)]
        size = np.bincount(account, minlength=n_acc)
        acc_prop = rng.beta(1.5, 4.0, n_acc)
        self._propensity: F64 = 0.6 * acc_prop[account] + 0.4 * rng.beta(1.5, 4.0, n)
        weight = rng.lognormal(0.0, 0.5, n)
        self._weight_cdf: F64 = np.cumsum(weight)
        zh = rng.random(n_acc) < 0.12
        plan = np.clip(np.log2(size) / 1.5 + rng.normal(0.0, 0.7, n_acc), 0, 3).astype(np.int64)
        seats = np.maximum(5, (size * rng.lognormal(2.0, 0.6, n_acc)).astype(np.int64))
        n_reps = min(99, max(3, n_acc // 40 + 3))
        acc_owner = rng.integers(0, n_reps, n_acc)
        w = max(6, len(str(n - 1)))
        wa = max(5, len(str(n_acc - 1)))
        acc_ids = [f"a-{j:0{wa}d}" for j in range(n_acc)]
        reps = [f"rep-{k:02d}" for k in range(n_reps)]
        acc_list: list[int] = account.tolist()
        self._entity_ids = [f"c-{i:0{w}d}" for i in range(n)]
        self._account_of = [acc_ids[a] for a in acc_list]
        self._owner_of = [reps[acc_owner[a]] for a in acc_list]
        self._locale_of: list[int] = zh[account].astype(np.int64).tolist()
        self._plan_of: list[int] = plan[account].tolist()
        self._seats_of: list[int] = seats[account].tolist()
        self._activity = np.asarray(_ACTIVITY, dtype=np.float64)
        self._impulse = np.asarray(_IMPULSE, dtype=np.float64)
        self._type_cdf = np.asarray([_cdf(row, 11) for row in _TYPE_MIX], dtype=np.float64)
        sub = np.ones((13, 7, 7), dtype=np.float64)
        for t, rows in _SUB_MIX.items():
            sub[t] = [_cdf(r, 7) for r in rows]
        self._sub_cdf = sub
        self._hold_ms = np.asarray(_HOLD, dtype=np.float64) * self._scale_ms
        self._dwell_median = np.asarray(_DWELL_MEDIAN_S)
        self._page_len = np.asarray([len(p) for p in _PAGES], dtype=np.int64)
        self._page_off = np.cumsum(self._page_len) - self._page_len
        self._dwell_stage = np.asarray(_DWELL_STAGE)

    def _init_dynamic(self) -> None:
        n = self._config.entities
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self._config.seed, 4])))
        init_cdf = np.asarray(_cdf(_INITIAL_STAGE, 7))
        stage = (rng.random(n)[:, None] > init_cdf[None, :]).sum(1).astype(np.int8)
        buy = rng.random(n) < _BUY_BASE + _BUY_SLOPE * self._propensity
        stage[(stage == READY_BUY) & ~buy] = READY_LOST
        hold = self._hold_ms[stage] * rng.standard_exponential(n)
        ready = stage == READY_BUY
        hold[ready] = self._purchase_delay(
            rng.standard_exponential(int(ready.sum())), _HOLD[READY_BUY]
        )
        self._stage = stage
        self._flags = np.zeros(n, dtype=np.uint8)
        self._next: I64 = self._start_ms + np.maximum(hold, 1000.0).astype(np.int64)
        self._clock = float(self._start_ms)
        self._seq = 0
        self._conv_idx: list[int] = []
        self._conv_ts: list[int] = []
        prefix = f"evt-{self._config.seed}-"
        self._id_prefix = prefix

    def _purchase_delay(self, expo: F64, mean_scale: float) -> F64:
        """Delay from the decision to the purchase: at least 1/4 of its mean, never 0."""
        mean = mean_scale * self._scale_ms
        return np.maximum(mean * (0.25 + 0.75 * expo), 1.0)

    # ------------------------------------------------------------- public API
    @property
    def position(self) -> int:
        """Number of items (events and poison payloads) emitted so far."""
        return self._position

    @property
    def config(self) -> GeneratorConfig:
        """The configuration this generator runs with."""
        return self._config

    @property
    def start_ms(self) -> int:
        """Epoch ms of the simulated clock's start (resolved when ``start_ms=None``)."""
        return self._start_ms

    def next_events(self, n: int) -> list[dict[str, Any]]:
        """The next ``n`` valid events (poison items are skipped, not emitted)."""
        out: list[dict[str, Any]] = []
        while len(out) < n:
            blk = self._current_block()
            take = min(n - len(out), len(blk.events) - self._vpos)
            out.extend(blk.events[self._vpos : self._vpos + take])
            self._vpos += take
            self._ppos = 0
            self._maybe_finish_block()
        self._position += len(out)
        return out

    def next_payloads(self, n: int) -> list[bytes]:
        """The next ``n`` items as raw bytes: ``orjson`` events with poison mixed in."""
        return self._next_items(n, encoded=True)  # type: ignore[return-value]

    def next_decoded(self, n: int) -> list[dict[str, Any] | bytes]:
        """The items of :meth:`next_payloads`, valid events as their dicts, not their JSON.

        Poison items stay bytes. The dicts are the generator's own: read them,
        do not change them.

        >>> config = GeneratorConfig(seed=1, entities=50, start_ms=1_700_000_000_000)
        >>> [orjson.loads(p) for p in BuyerJourneyGenerator(config).next_payloads(3)] == (
        ...     BuyerJourneyGenerator(config).next_decoded(3))
        True
        """
        return self._next_items(n, encoded=False)

    def _next_items(self, n: int, *, encoded: bool) -> list[dict[str, Any] | bytes]:
        out: list[dict[str, Any] | bytes] = []
        while len(out) < n:
            blk = self._current_block()
            enc: list[Any]
            if not encoded:
                enc, base = blk.events, 0
            else:
                if blk.encoded is None:  # encode only what was not handed out as dicts
                    blk.encoded_from = self._vpos
                    blk.encoded = _encode_many(blk.events[self._vpos :])
                enc, base = blk.encoded, blk.encoded_from
            counts = blk.poison_counts
            if counts is None:
                take = min(n - len(out), len(blk.events) - self._vpos)
                out.extend(enc[self._vpos - base : self._vpos - base + take])
                self._vpos += take
            else:
                while len(out) < n and self._vpos < len(blk.events):
                    if self._ppos < counts[self._vpos]:
                        j = blk.poison_first[self._vpos] + self._ppos
                        out.append(self._poison(blk.poison_kinds[j], blk.events[self._vpos], j))
                        self._ppos += 1
                    else:
                        out.append(enc[self._vpos - base])
                        self._vpos += 1
                        self._ppos = 0
            self._maybe_finish_block()
        self._position += len(out)
        return out

    def conversions(self) -> dict[str, int]:
        """Ground truth so far: entity id -> ts of its first emitted purchase."""
        ids = self._entity_ids
        out = {ids[i]: t for i, t in zip(self._conv_idx, self._conv_ts, strict=True)}
        if self._block is not None:
            for pos, ent, ts in self._block.conversions:
                if pos < self._vpos:
                    out[ids[ent]] = ts
        return out

    def snapshot(self) -> GeneratorSnapshot:
        """A small picklable resume point (block-start state + offset into the block)."""
        if self._block is None or self._block_start is None or self._undo is None:
            rng_st, prng_st = _rng_state(self._rng), _rng_state(self._poison_rng)
            clock, seq, n_conv = self._clock, self._seq, len(self._conv_idx)
            stage, flags, nxt = self._stage, self._flags, self._next
            voff = poff = 0
        else:
            rng_st, prng_st, clock, seq, n_conv = self._block_start
            idx, old_stage, old_flags, old_next = self._undo
            stage, flags, nxt = self._stage.copy(), self._flags.copy(), self._next.copy()
            stage[idx], flags[idx], nxt[idx] = old_stage, old_flags, old_next
            voff, poff = self._vpos, self._ppos
        base = int(clock)
        delta = nxt - base
        small = bool(delta.size == 0 or (delta.min() > -(2**31) and delta.max() < 2**31))
        delta_arr = delta.astype(np.int32) if small else delta
        return GeneratorSnapshot(
            schema_version=_SCHEMA_VERSION,
            config_key=dataclasses.astuple(self._config),
            start_ms=self._start_ms,
            clock_ms=clock,
            seq=seq,
            position=self._position,
            rng_state=rng_st,
            poison_rng_state=prng_st,
            stage=stage.tobytes(),
            flags=flags.tobytes(),
            next_base_ms=base,
            next_dtype=delta_arr.dtype.str,
            next_delta=delta_arr.tobytes(),
            conv_idx=np.asarray(self._conv_idx[:n_conv], dtype=np.int32).tobytes(),
            conv_ts=np.asarray(self._conv_ts[:n_conv], dtype=np.int64).tobytes(),
            valid_offset=voff,
            poison_offset=poff,
        )

    @classmethod
    def restore(cls, config: GeneratorConfig, snapshot: GeneratorSnapshot) -> BuyerJourneyGenerator:
        """A generator that continues exactly where ``snapshot`` was taken."""
        if snapshot.schema_version != _SCHEMA_VERSION:
            raise SnapshotMismatchError(
                f"generator snapshot schema {snapshot.schema_version}, expected "
                f"{_SCHEMA_VERSION}: start a new generator instead of restoring"
            )
        if snapshot.config_key != dataclasses.astuple(config):
            raise SnapshotMismatchError(
                f"generator snapshot was taken with config {snapshot.config_key}, "
                f"not {dataclasses.astuple(config)}: restore with the original config"
            )
        live = dataclasses.replace(config, start_ms=snapshot.start_ms)
        gen = cls(live)
        gen._config = config
        n = config.entities
        stage = np.frombuffer(snapshot.stage, dtype=np.int8).copy()
        flags = np.frombuffer(snapshot.flags, dtype=np.uint8).copy()
        delta = np.frombuffer(snapshot.next_delta, dtype=np.dtype(snapshot.next_dtype))
        if stage.size != n or flags.size != n or delta.size != n:
            raise SnapshotMismatchError(
                f"generator snapshot holds {stage.size} entities, config has {n}"
            )
        gen._stage, gen._flags = stage, flags
        gen._next = delta.astype(np.int64) + snapshot.next_base_ms
        gen._clock, gen._seq = snapshot.clock_ms, snapshot.seq
        gen._conv_idx = np.frombuffer(snapshot.conv_idx, dtype=np.int32).tolist()
        gen._conv_ts = np.frombuffer(snapshot.conv_ts, dtype=np.int64).tolist()
        _set_rng_state(gen._rng, snapshot.rng_state)
        _set_rng_state(gen._poison_rng, snapshot.poison_rng_state)
        gen._position = snapshot.position
        if snapshot.valid_offset or snapshot.poison_offset:
            gen._current_block()
            gen._vpos, gen._ppos = snapshot.valid_offset, snapshot.poison_offset
        return gen

    # -------------------------------------------------------------- internals
    def _current_block(self) -> _Block:
        if self._block is None:
            self._block = self._generate_block()
            self._vpos = self._ppos = 0
        return self._block

    def _maybe_finish_block(self) -> None:
        blk = self._block
        if blk is not None and self._vpos >= len(blk.events):
            for _, ent, ts in blk.conversions:
                self._conv_idx.append(ent)
                self._conv_ts.append(ts)
            self._block = None
            self._block_start = self._undo = None
            self._vpos = self._ppos = 0

    def _pick_entities(self, n: int) -> I64:
        """Contacts for ``n`` events: static weight x stage activity (rejection sampling)."""
        rng, cdf, chunks, got = self._rng, self._weight_cdf, [], 0
        top = float(self._activity.max())
        while got < n:
            k = 3 * (n - got) + 16
            cand = np.searchsorted(cdf, rng.random(k) * cdf[-1], side="right")
            cand = np.minimum(cand, cdf.size - 1)
            keep = cand[rng.random(k) * top < self._activity[self._stage[cand]]]
            chunks.append(keep)
            got += keep.size
        return np.concatenate(chunks)[:n].astype(np.int64)

    def _transition(self, old: S8, prop: F64) -> tuple[S8, F64]:
        """One step of the hidden stage chain for contacts whose stage has expired."""
        m = old.size
        ra, rb = self._rng.random(m), self._rng.random(m)
        expo = self._rng.standard_exponential(m)
        new = old.copy()
        new[old == COLD] = RESEARCH
        sel = old == RESEARCH
        new[sel] = np.where(ra < 0.35 + 0.5 * prop, EVAL, COLD)[sel]
        sel = old == EVAL
        ready = np.where(rb < _BUY_BASE + _BUY_SLOPE * prop, READY_BUY, READY_LOST)
        back = np.where(rb < 0.3, RESEARCH, COLD)
        new[sel] = np.where(ra < 0.3 + 0.6 * prop, ready, back)[sel]
        sel = old == READY_LOST
        new[sel] = np.where(ra < 0.25, EVAL, COLD)[sel]
        sel = old == CUSTOMER
        new[sel] = np.select([ra < 0.2, ra < 0.6], [EVAL, CHURN], CUSTOMER)[sel]
        sel = old == CHURN
        new[sel] = np.where(ra < 0.3, CUSTOMER, COLD)[sel]
        hold = np.maximum(self._hold_ms[new] * expo, 1000.0)
        buy = new == READY_BUY
        hold[buy] = self._purchase_delay(expo[buy], _HOLD[READY_BUY])
        return new, hold

    def _generate_block(self) -> _Block:
        cfg, rng = self._config, self._rng
        self._block_start = (
            _rng_state(rng),
            _rng_state(self._poison_rng),
            self._clock,
            self._seq,
            len(self._conv_idx),
        )
        stage, flags, nxt = self._stage, self._flags, self._next
        # 1. Event times and contacts.
        clock = self._clock + np.cumsum(rng.standard_exponential(_BLOCK) * self._mean_gap_ms)
        self._clock = float(clock[-1])
        ts = np.floor(clock).astype(np.int64)
        t_end = int(ts[-1])
        ents = self._pick_entities(_BLOCK)
        touched, first = np.unique(ents, return_index=True)
        due_pre = np.flatnonzero((stage == READY_BUY) & (nxt < t_end))
        mod = np.union1d(touched, due_pre)
        self._undo = (mod, stage[mod].copy(), flags[mod].copy(), nxt[mod].copy())
        # 2. Expired stages move on at the contact's first event in the block.
        first_ts = ts[first]
        expired = (nxt[touched] <= first_ts) & (stage[touched] != READY_BUY)
        idx = touched[expired]
        new, hold = self._transition(stage[idx], self._propensity[idx])
        stage[idx] = new
        nxt[idx] = first_ts[expired] + hold.astype(np.int64)
        flags[idx] &= ~np.uint8(_SIGNAL)
        # 3. What each contact does, given its stage.
        st = stage[ents]
        u = rng.random((6, _BLOCK))
        typ = (u[0][:, None] > self._type_cdf[st]).sum(1)
        typ[u[5] < cfg.unknown_type_fraction] = UNKNOWN
        sub = (u[1][:, None] > self._sub_cdf[typ, st]).sum(1)
        dwell = self._dwell_median[np.minimum(sub, 6)] * self._dwell_stage[st]
        dwell = np.round(dwell * np.exp(0.7 * rng.standard_normal(_BLOCK)), 1)
        is_sig = (
            ((typ == PV) & (sub == 0))
            | ((typ == FORM) & (sub != 2))
            | ((typ == CHAT) & (sub == 0))
            | (typ == CART)
        )
        # 4. A rare cart_add from an early stage turns into an impulse purchase.
        imp = (typ == CART) & (u[4] < self._impulse[st])
        imp_e, imp_i = np.unique(ents[imp], return_index=True)
        if imp_e.size:
            imp_ts = ts[imp][imp_i]
            delay = self._purchase_delay(rng.standard_exponential(imp_e.size), 0.125)
            open_ = stage[imp_e] != READY_BUY
            imp_e, imp_ts, delay = imp_e[open_], imp_ts[open_], delay[open_]
            stage[imp_e] = READY_BUY
            nxt[imp_e] = imp_ts + delay.astype(np.int64)
            flags[imp_e] |= np.uint8(_SIGNAL)
        # 5. Scheduled purchases fall due (only after at least one buying signal).
        sig_e, sig_i = np.unique(ents[is_sig], return_index=True)
        sig_ts = ts[is_sig][sig_i]
        cand = mod[(stage[mod] == READY_BUY) & (nxt[mod] < t_end)]
        due = nxt[cand]
        first_sig = np.full(cand.size, _MAX_I64, dtype=np.int64)
        if sig_e.size:
            pos = np.minimum(np.searchsorted(sig_e, cand), sig_e.size - 1)
            hit = sig_e[pos] == cand
            first_sig[hit] = sig_ts[pos[hit]]
        ok = ((flags[cand] & _SIGNAL) != 0) | (first_sig < due)
        buyers, p_ts = cand[ok], due[ok]
        late = cand[~ok]
        nxt[late] = np.maximum(nxt[late], t_end) + int(self._scale_ms / 8)
        newly = (flags[buyers] & _CONVERTED) == 0
        stage[buyers] = CUSTOMER
        nxt[buyers] = p_ts + np.maximum(
            self._hold_ms[CUSTOMER] * rng.standard_exponential(buyers.size), 1000.0
        ).astype(np.int64)
        flags[buyers] = (flags[buyers] & ~np.uint8(_SIGNAL)) | np.uint8(_CONVERTED)
        flags[sig_e] |= np.uint8(_SIGNAL)
        # 6. Merge purchases into time order; add disorder.
        n_p = buyers.size
        pu = rng.random((2, n_p))
        order = np.argsort(np.concatenate([ts, p_ts]), kind="stable")
        ts = np.concatenate([ts, p_ts])[order]
        ents = np.concatenate([ents, buyers])[order]
        typ = np.concatenate([typ, np.full(n_p, PURCHASE)])[order]
        sub = np.concatenate([sub, np.zeros(n_p, np.int64)])[order]
        r2 = np.concatenate([u[2], pu[0]])[order]
        r3 = np.concatenate([u[3], pu[1]])[order]
        dwell = np.concatenate([dwell, np.zeros(n_p)])[order]
        st = np.concatenate([st, np.full(n_p, READY_BUY, dtype=np.int8)])[order]
        newly_mark = np.concatenate([np.zeros(_BLOCK, bool), newly])[order]
        m = ts.size
        if cfg.out_of_order_fraction > 0:
            late_mask = rng.random(m) < cfg.out_of_order_fraction
            ts[late_mask] -= rng.integers(1, cfg.max_disorder_ms + 1, int(late_mask.sum()))
        events = self._build_events(ts, ents, typ, sub, r2, r3, dwell)
        # 7. Duplicates: re-emit an event (same event_id) a little later.
        src = np.arange(m)
        if cfg.duplicate_fraction > 0:
            q = cfg.duplicate_fraction / (1.0 - cfg.duplicate_fraction)
            dup = np.flatnonzero(rng.random(m) < q)
            gap = rng.integers(1, 65, dup.size)
            keys = np.concatenate([2 * src, 2 * np.minimum(dup + gap, m - 1) + 1])
            src = np.concatenate([src, dup])[np.argsort(keys, kind="stable")]
            seen = np.zeros(m, bool)
            out: list[dict[str, Any]] = []
            for s in src.tolist():
                e = events[s]
                out.append({**e, "props": dict(e["props"])} if seen[s] else e)
                seen[s] = True
            events = out
        _, pos_of = np.unique(src, return_index=True)  # first occurrence of each event
        conversions = [
            (int(pos_of[i]), int(ents[i]), int(ts[i])) for i in np.flatnonzero(newly_mark)
        ]
        # 8. Poison items to put before each event (separate stream of draws).
        counts: list[int] | None = None
        first_p: list[int] = []
        kinds: list[int] = []
        if cfg.poison_fraction > 0:
            c = self._poison_rng.geometric(1.0 - cfg.poison_fraction, src.size) - 1
            counts = c.tolist()
            first_p = (np.cumsum(c) - c).tolist()
            kinds = self._poison_rng.integers(0, _N_POISON_KINDS, int(c.sum())).tolist()
        self._seq += m
        return _Block(events, st[src], counts, first_p, kinds, conversions)

    def _build_events(
        self, ts: I64, ents: I64, typ: I64, sub: I64, r2: F64, r3: F64, dwell: F64
    ) -> list[dict[str, Any]]:
        """Turn one block's draws into event dicts (props built type by type)."""
        owners, locale, plan, seats = self._owner_of, self._locale_of, self._plan_of, self._seats_of
        props: list[Any] = [None] * ts.size

        def rows(k: int) -> Iterator[tuple[int, int, int, float, float]]:
            sel = np.flatnonzero(typ == k)
            cols = (sel, ents[sel], sub[sel], r2[sel], r3[sel])
            return zip(*(c.tolist() for c in cols), strict=True)

        sel = np.flatnonzero(typ == PV)
        cat = sub[sel]
        page = self._page_off[cat] + (r2[sel] * self._page_len[cat]).astype(np.int64)
        for i, p, c, d in zip(
            sel.tolist(), page.tolist(), cat.tolist(), dwell[sel].tolist(), strict=True
        ):
            props[i] = {"page": _PAGE_LIST[p], "category": _CATEGORIES[c], "duration_s": d}
        for i, _, s, _, _ in rows(CLICK):
            props[i] = {"element": _CLICKS[s]}
        for k in (EOPEN, ECLICK):
            for i, e, s, _, _ in rows(k):
                props[i] = (
                    {"campaign": _CAMPAIGNS[s], "owner": owners[e]}
                    if s >= 5
                    else {"campaign": _CAMPAIGNS[s]}
                )
        for i, e, s, a, b in rows(CHAT):
            texts = _CHAT_TEXTS[s][locale[e]]
            text = texts[int(a * len(texts))]
            if "{n}" in text:
                text = text.replace("{n}", str(max(5, int(seats[e] * (0.5 + b)))))
            props[i] = {"text": text, "owner": owners[e]} if b < 0.3 else {"text": text}
        for i, _, s, _, _ in rows(FORM):
            props[i] = {"form": _FORMS[s]}
        for i, e, s, _, _ in rows(CRM):
            props[i] = {"activity": _CRM[s], "owner": owners[e]}
        for i, e, _, a, b in rows(CART):
            item, price = _PLANS[plan[e]] if a < 0.75 else _ADDONS[int(b * 2)]
            props[i] = {"item_id": item, "price": price}
        for i, e, _, _, b in rows(PURCHASE):
            item, price = _PLANS[plan[e]]
            amount = round(price * (0.85 + 0.3 * b), 2)
            props[i] = {"item_id": item, "amount": amount, "owner": owners[e]}
        for i, e, s, _, b in rows(PAYMENT):
            amount = round(_PLANS[plan[e]][1] / 12 * (0.9 + 0.2 * b), 2)
            props[i] = {"status": "paid" if s == 0 else "overdue", "amount": amount}
        for i, e, s, a, _ in rows(TICKET):
            texts = _TICKET_TEXTS[locale[e]]
            props[i] = {"severity": _SEVERITIES[s], "text": texts[int(a * len(texts))]}
        for i, e, s, a, b in rows(MENTION):
            texts = _MENTION_TEXTS[s][locale[e]]
            low, width = _MENTION_SENTIMENT[s]
            props[i] = {
                "channel": _CHANNELS[int(b * 5)],
                "text": texts[int(a * len(texts))],
                "sentiment": round(low + width * b, 3),
            }
        name = typ.copy()
        for i, _, _, a, b in rows(UNKNOWN):
            j = int(a * 3)
            name[i] = UNKNOWN + j
            if j == 0:
                props[i] = {"webinar": _WEBINARS[int(b * 3)], "minutes": int(5 + 50 * b)}
            elif j == 1:
                props[i] = {"nps": int(11 * b)}
            else:
                props[i] = {"platform": "ios" if b < 0.5 else "android"}
        eids, aids, names, prefix = self._entity_ids, self._account_of, _TYPE_NAMES, self._id_prefix
        return [
            {
                "event_id": f"{prefix}{k}",
                "ts": t,
                "entity_id": eids[e],
                "account_id": aids[e],
                "type": names[y],
                "props": p,
            }
            for k, t, e, y, p in zip(
                range(self._seq, self._seq + ts.size),
                ts.tolist(),
                ents.tolist(),
                name.tolist(),
                props,
                strict=True,
            )
        ]

    def _poison(self, kind: int, tpl: dict[str, Any], j: int) -> bytes:
        """One invalid payload, built from the event it precedes (``kind`` picks the fault)."""
        bad_id = f"{tpl['event_id']}-x{j}"
        base = {**tpl, "event_id": bad_id}
        head = (
            f'{{"event_id":"{bad_id}","ts":{tpl["ts"]},"entity_id":"{tpl["entity_id"]}",'
            f'"account_id":"{tpl["account_id"]}",'
        ).encode()
        if kind == 0:  # truncated JSON
            raw = orjson.dumps(base)
            return raw[: len(raw) // 2]
        if kind == 1:  # missing event_id
            return orjson.dumps({k: v for k, v in base.items() if k != "event_id"})
        if kind == 2:  # NaN amount
            return head + b'"type":"purchase","props":{"item_id":"plan-team","amount":NaN}}'
        if kind == 3:  # Infinity amount
            return head + b'"type":"payment","props":{"status":"paid","amount":Infinity}}'
        if kind == 4:  # ts of the wrong type
            return orjson.dumps({**base, "ts": True})
        if kind == 5:  # entity_id as a number
            return orjson.dumps({**base, "entity_id": 123456})
        if kind == 6:  # props not an object
            return orjson.dumps({**base, "props": [1, 2, 3]})
        if kind == 7:  # nesting deeper than any parser allows
            return head + b'"type":"page_view","props":{"x":' + b"[" * 5000 + b"]" * 5000 + b"}}"
        if kind == 8:  # invalid UTF-8
            return head + b'"type":"chat_message","props":{"text":"\xff\xfe\xfd price"}}'
        if kind == 9:  # far-future ts (100 years ahead)
            return orjson.dumps({**base, "ts": int(tpl["ts"]) + 3_155_760_000_000})
        if kind == 10:  # not an object
            return b'["page_view", 1, 2]'
        if kind == 11:  # empty event_id
            return orjson.dumps({**base, "event_id": ""})
        return orjson.dumps({k: v for k, v in base.items() if k != "type"})  # missing type


def iter_events(config: GeneratorConfig, count: int) -> Iterator[dict[str, Any]]:
    """Yield the first ``count`` valid events of ``config``."""
    gen = BuyerJourneyGenerator(config)
    left = count
    while left > 0:
        batch = gen.next_events(min(left, _BLOCK))
        left -= len(batch)
        yield from batch
