"""Where the rules come from: a TOML file and/or a Redis key, validated and reloaded live.

One :class:`RulesProvider` per process is shared by every shard of that
process. It is configuration, not Bytewax state: each shard asks it for the
current rule set at the start of every batch (:meth:`RulesProvider.current`),
and at most every ``reload_interval_s`` that call also checks the sources
(the file's modification time and size, one ``GET`` of the Redis key). A
changed text is parsed, validated and compiled first: a bad one is rejected
with a clear error and the running rules stay. Applied changes and
rejections are recorded in an audit stream (docs/rules.md, "Live changes").

Version numbers increase with every applied change. With Redis they are
kept in the hash ``{redis_key}:version`` and assigned by a Lua script, so
all processes agree and a restart with unchanged rules keeps its number;
without Redis they count from 1 in each process.
"""

from __future__ import annotations

import difflib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import orjson
import redis

from intentflow.errors import IntentflowError
from intentflow.features.spec import FeatureSpec
from intentflow.online_models.catalog import ActionCatalog
from intentflow.redisutil import connect, redact_url
from intentflow.rules.compile import RuleSet, compile_rules
from intentflow.rules.engine import RuleEngine, RuleState
from intentflow.rules.model import RulesDoc, RulesError, parse_rules_text

__all__ = [
    "DEFAULT_AUDIT_STREAM",
    "DEFAULT_KEY",
    "RulesProvider",
    "load_rules_file",
    "rules_diff",
]

log = logging.getLogger("intentflow.rules")

#: The Redis key whose value (TOML text) holds the rules.
DEFAULT_KEY: Final = "intentflow:rules"
#: The Redis stream where applied changes and rejections are recorded.
DEFAULT_AUDIT_STREAM: Final = "intentflow:rules:audit"
_TEXT_DIFF_CHARS: Final = 16_384
_SOCKET_TIMEOUT_S: Final = 1.0

# KEYS: version hash, audit stream. ARGV: content hash, ts, source, diff, text diff,
# rule count, audit maxlen. Returns {number, 1 if recorded as a new version else 0}.
_APPLY_LUA: Final = """
local cur = redis.call('HGET', KEYS[1], 'hash')
if cur == ARGV[1] then
  return {tonumber(redis.call('HGET', KEYS[1], 'number')), 0}
end
local n = redis.call('HINCRBY', KEYS[1], 'number', 1)
local version = n .. '-' .. string.sub(ARGV[1], 1, 12)
redis.call('HSET', KEYS[1], 'hash', ARGV[1], 'version', version, 'ts', ARGV[2],
  'source', ARGV[3])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'event', 'applied',
  'version', version, 'number', tostring(n), 'hash', ARGV[1], 'ts', ARGV[2],
  'source', ARGV[3], 'diff', ARGV[4], 'text_diff', ARGV[5], 'rules', ARGV[6])
return {n, 1}
"""


def rules_diff(old: RulesDoc, new: RulesDoc) -> dict[str, Any]:
    """Rule ids added, removed and changed between two documents.

    >>> from intentflow.rules.model import parse_rules_text
    >>> a = parse_rules_text('[[rules]]\\nid = "x"\\ntypes = ["click"]\\nadjust = {boost = 2.0}')
    >>> b = parse_rules_text('[[rules]]\\nid = "y"\\ntypes = ["click"]\\nadjust = {boost = 2.0}')
    >>> rules_diff(a, b)
    {'added': ['y'], 'removed': ['x'], 'changed': [], 'lookups_changed': False}
    """
    before = {r.id: r.canonical for r in old.rules}
    after = {r.id: r.canonical for r in new.rules}
    return {
        "added": sorted(after.keys() - before.keys()),
        "removed": sorted(before.keys() - after.keys()),
        "changed": sorted(k for k in after.keys() & before.keys() if after[k] != before[k]),
        "lookups_changed": dict(old.lookups) != dict(new.lookups),
    }


def _text_diff(old: RuleSet, new_text: str, new_version: str) -> str:
    lines = difflib.unified_diff(
        old.text.splitlines(),
        new_text.splitlines(),
        fromfile=f"rules {old.version}",
        tofile=f"rules {new_version}",
        lineterm="",
    )
    text = "\n".join(lines)
    if len(text) > _TEXT_DIFF_CHARS:
        text = text[:_TEXT_DIFF_CHARS] + "\n... (truncated)"
    return text


def load_rules_file(
    path: str | os.PathLike[str], spec: FeatureSpec, catalog: ActionCatalog
) -> RuleSet:
    """Read, validate and compile a rules file (version number 1); raises :class:`RulesError`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise RulesError(f"rules file {p} does not exist") from err
    except (OSError, UnicodeDecodeError) as err:
        raise RulesError(f"rules file {p}: {err}") from err
    doc = parse_rules_text(text, source=str(p))
    return compile_rules(doc, spec, catalog, number=1, source=f"file:{p}", text=text)


class RulesProvider:
    """The process-wide current rule set, from a file and/or a Redis key.

    When the Redis key exists it wins; when it is absent the file applies;
    with neither there are no rules. ``clock`` (seconds, monotonic) paces
    the checks; tests pass their own. ``idle_timers``, ``max_keys`` and
    ``max_timers`` configure each shard's :class:`RuleEngine`.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        catalog: ActionCatalog,
        *,
        path: str | os.PathLike[str] | None = None,
        redis_url: str | None = None,
        redis_key: str | None = DEFAULT_KEY,
        reload_interval_s: float = 2.0,
        audit_stream: str = DEFAULT_AUDIT_STREAM,
        audit_maxlen: int = 10_000,
        idle_timers: bool = True,
        max_keys: int = 200_000,
        max_timers: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.catalog = catalog
        self.path = Path(path) if path else None
        self.redis_url = redis_url or None
        self.redis_key = redis_key or None
        self.version_key = f"{redis_key or DEFAULT_KEY}:version"
        self.reload_interval_s = max(0.0, reload_interval_s)
        self.audit_stream = audit_stream
        self.audit_maxlen = audit_maxlen
        self.idle_timers = idle_timers
        self.max_keys = max(1, max_keys)
        self.max_timers = max(1, max_timers)
        self._clock = clock
        self._lock = threading.Lock()
        self._set = RuleSet.empty_set()
        self._loaded = False
        self._raw: tuple[str, str | None] | None = None
        self._file_sig: tuple[int, int] | None = None
        self._file_text: str | None = None
        self._next_check = 0.0
        self._client: redis.Redis | None = None
        self._script: Any = None
        self._read_failed = False
        self.history: deque[dict[str, Any]] = deque(maxlen=100)
        self.last_error: str | None = None
        #: Told of every reload (``ok=False``: refused); the engine's metrics.
        self.on_reload: Callable[[bool], None] | None = None

    @classmethod
    def from_config(
        cls, config: Any, spec: FeatureSpec, catalog: ActionCatalog
    ) -> RulesProvider | None:
        """The provider for an engine :class:`~intentflow.config.Config`, or ``None``.

        ``None`` when there is no rules file and no Redis (no rules can ever apply).
        """
        section = config.rules
        url = config.redis.url or None
        if not section.path and not (url and section.redis_key):
            return None
        return cls(
            spec,
            catalog,
            path=section.path or None,
            redis_url=url,
            redis_key=section.redis_key or None,
            reload_interval_s=section.reload_interval_s,
            audit_stream=section.audit_stream,
            audit_maxlen=section.audit_maxlen,
            idle_timers=section.idle_timers,
            max_keys=section.max_keys_per_shard,
            max_timers=section.max_timers_per_shard,
        )

    def engine(self, state: RuleState | None, schema_version: str) -> RuleEngine:
        """A shard's rule engine with this provider's limits."""
        return RuleEngine(
            state,
            schema_version=schema_version,
            max_keys=self.max_keys,
            max_timers=self.max_timers,
            idle_timers=self.idle_timers,
        )

    # --- reading -----------------------------------------------------------------------------

    def _redis(self) -> redis.Redis:
        if self._client is None:
            assert self.redis_url is not None
            self._client = connect(
                self.redis_url,
                decode_responses=True,
                socket_timeout=_SOCKET_TIMEOUT_S,
                socket_connect_timeout=_SOCKET_TIMEOUT_S,
            )
            self._script = self._client.register_script(_APPLY_LUA)
        return self._client

    def _read(self) -> tuple[str, str | None]:
        """``(source, text)`` of the rules that should apply; text ``None``: file missing."""
        if self.redis_url and self.redis_key:
            value: Any = self._redis().get(self.redis_key)
            if value is not None:
                return f"redis:{self.redis_key}", str(value)
        if self.path is None:
            return "none", ""
        source = f"file:{self.path}"
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._file_sig = None
            return source, None
        sig = (st.st_mtime_ns, st.st_size)
        if sig != self._file_sig or self._file_text is None:
            self._file_text = self.path.read_text(encoding="utf-8")
            self._file_sig = sig
        return source, self._file_text

    def _compile(self, raw: tuple[str, str | None]) -> RuleSet:
        source, text = raw
        if text is None:
            raise RulesError(f"rules {source}: the file does not exist")
        doc = parse_rules_text(text, source=source)
        return compile_rules(doc, self.spec, self.catalog, source=source, text=text)

    # --- applying ------------------------------------------------------------------------------

    def _apply(self, new: RuleSet) -> None:
        old = self._set
        diff = rules_diff(old.doc, new.doc)
        now_ms = int(time.time() * 1000)
        number = old.number + 1
        recorded_remotely = False
        if self.redis_url:
            provisional = f"{number}-{new.content_hash[:12]}"
            try:
                self._redis()
                res: Any = self._script(
                    keys=[self.version_key, self.audit_stream],
                    args=[
                        new.content_hash,
                        now_ms,
                        new.source,
                        orjson.dumps(diff).decode(),
                        _text_diff(old, new.text, provisional),
                        len(new.rules),
                        self.audit_maxlen,
                    ],
                )
                number, recorded_remotely = int(res[0]), True
            except redis.RedisError as err:
                log.warning("rules: cannot record the change in Redis (%s); numbering locally", err)
        new = new.with_number(number)
        record = {
            "event": "applied",
            "version": new.version,
            "number": number,
            "hash": new.content_hash,
            "ts": now_ms,
            "source": new.source,
            "diff": diff,
            "rules": len(new.rules),
            "recorded": recorded_remotely,
        }
        self.history.append(record)
        self._set = new
        self._loaded = True
        self.last_error = None
        log.info(
            "rules %s applied from %s: %d enabled rules; added %s, removed %s, changed %s",
            new.version,
            new.source,
            len(new.rules),
            diff["added"] or "-",
            diff["removed"] or "-",
            diff["changed"] or "-",
        )
        if self.on_reload is not None:
            self.on_reload(True)

    def _reject(self, source: str, err: Exception) -> None:
        now_ms = int(time.time() * 1000)
        message = str(err)
        record = {
            "event": "rejected",
            "version": self._set.version,
            "ts": now_ms,
            "source": source,
            "error": message,
        }
        self.history.append(record)
        self.last_error = message
        log.error("rules from %s rejected; still running %s: %s", source, self._set.version, err)
        if self.on_reload is not None:
            self.on_reload(False)
        if self.redis_url:
            try:
                self._redis().xadd(
                    self.audit_stream,
                    {k: str(v) for k, v in record.items()},
                    maxlen=self.audit_maxlen,
                    approximate=True,
                )
            except redis.RedisError as rerr:
                log.warning("rules: cannot record the rejection in Redis (%s)", rerr)

    def _poll(self) -> bool:
        self._next_check = self._clock() + self.reload_interval_s
        try:
            raw = self._read()
        except (redis.RedisError, OSError, UnicodeDecodeError) as err:
            if not self._read_failed:
                where = redact_url(self.redis_url) if self.redis_url else str(self.path)
                log.warning("rules: cannot read the rules (%s: %s); keeping them", where, err)
            self._read_failed = True
            return False
        self._read_failed = False
        if raw == self._raw:
            return False
        self._raw = raw
        try:
            new = self._compile(raw)
        except RulesError as err:
            self._reject(raw[0], err)
            return False
        if new.content_hash == self._set.content_hash:
            self._loaded = True
            return False
        self._apply(new)
        return True

    # --- public ----------------------------------------------------------------------------------

    def current(self) -> RuleSet:
        """The newest validated rule set; checks the sources when due. Never raises."""
        if self._clock() >= self._next_check:
            if not self._loaded:
                with self._lock:
                    if not self._loaded and self._clock() >= self._next_check:
                        self._poll()
            elif self._lock.acquire(blocking=False):
                try:
                    if self._clock() >= self._next_check:
                        self._poll()
                finally:
                    self._lock.release()
        return self._set

    def reload(self) -> bool:
        """Check the sources now; True when a new rule set was applied. Never raises."""
        with self._lock:
            return self._poll()

    def load_initial(self) -> RuleSet:
        """Load the rules at start-up; a bad rule set or an unreachable source raises."""
        with self._lock:
            try:
                raw = self._read()
            except (redis.RedisError, OSError, UnicodeDecodeError) as err:
                where = redact_url(self.redis_url) if self.redis_url else str(self.path)
                raise IntentflowError(f"cannot read the rules ({where}): {err}") from err
            new = self._compile(raw)
            self._raw = raw
            self._next_check = self._clock() + self.reload_interval_s
            if new.content_hash != self._set.content_hash:
                self._apply(new)
            self._loaded = True
            return self._set

    def close(self) -> None:
        """Close the Redis connection, if any."""
        if self._client is not None:
            self._client.close()
            self._client = None
