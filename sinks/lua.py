"""Lua scripts the Redis sink runs server-side."""

from __future__ import annotations

import hashlib
from typing import Final

__all__ = [
    "ALERTS_ONCE",
    "ALERTS_ONCE_SHA",
    "ALERT_ONCE",
    "ALERT_ONCE_SHA",
    "RECLAIM_IDS",
    "SCORES_SET",
    "SCORES_SET_SHA",
]

#: Append an alert to the alerts stream unless its id was seen recently.
#:
#: KEYS[1] seen key (``<seen_key_prefix><alert_id>``), KEYS[2] alerts stream;
#: ARGV[1] seen-key TTL in seconds, ARGV[2] approximate stream MAXLEN,
#: ARGV[3] alert JSON. Returns the new entry id, or 0 for a duplicate.
#:
#: The script runs atomically, so "XADD then SET" has the effect of
#: "SET NX, then XADD only if it succeeded", and a failing XADD (wrong key
#: type, out of memory) leaves no seen key behind that would drop the alert
#: on retry.
ALERT_ONCE: Final[str] = """\
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'alert', ARGV[3])
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
return id
"""

#: SHA1 of :data:`ALERT_ONCE`, the name EVALSHA knows it by.
ALERT_ONCE_SHA: Final[str] = hashlib.sha1(ALERT_ONCE.encode()).hexdigest()

#: :data:`ALERT_ONCE` for many alerts in one call (the single-server sink).
#:
#: KEYS[1] alerts stream, KEYS[2..n+1] the alerts' seen keys; ARGV[1] seen-key
#: TTL in seconds, ARGV[2] approximate stream MAXLEN, ARGV[3..n+2] the alerts'
#: JSON, in the order of their seen keys. Returns one reply per alert, in
#: order: the new entry id, or 0 for a duplicate (an alert whose id appears
#: twice in one call is appended once).
#:
#: Each alert is checked, appended and marked in that order, so the
#: argument for :data:`ALERT_ONCE` holds per alert. If a command fails
#: (the stream key holds another type), the script stops with an error
#: after the alerts before it were appended and marked: a retry or replay
#: finds those seen and appends the rest.
ALERTS_ONCE: Final[str] = """\
local out = {}
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    out[i - 1] = 0
  else
    out[i - 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'alert', ARGV[i + 1])
    redis.call('SET', KEYS[i], '1', 'EX', ARGV[1])
  end
end
return out
"""

#: SHA1 of :data:`ALERTS_ONCE`.
ALERTS_ONCE_SHA: Final[str] = hashlib.sha1(ALERTS_ONCE.encode()).hexdigest()

#: Write latest-score hashes: ``HSET key score s ts t model m`` and
#: ``EXPIRE key ttl`` for each key.
#:
#: KEYS[1..n] score hashes; ARGV[1] TTL in seconds, then one
#: ``score, ts, model`` triple per key (ARGV[3i-1], ARGV[3i], ARGV[3i+1] for
#: KEYS[i]), written as given. Returns the number of hashes written.
SCORES_SET: Final[str] = """\
local ttl = ARGV[1]
for i = 1, #KEYS do
  local j = 3 * i - 1
  redis.call('HSET', KEYS[i], 'score', ARGV[j], 'ts', ARGV[j + 1], 'model', ARGV[j + 2])
  redis.call('EXPIRE', KEYS[i], ttl)
end
return #KEYS
"""

#: SHA1 of :data:`SCORES_SET`.
SCORES_SET_SHA: Final[str] = hashlib.sha1(SCORES_SET.encode()).hexdigest()

#: Claim stale pending entries of a consumer group, returning only their ids.
#:
#: KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] min idle (ms),
#: ARGV[4] start id, ARGV[5] count. Returns ``{next_start_id, {ids...}}``.
#: JUSTID keeps the ids of entries trimmed from the stream, which Redis 6.2
#: reports as nil without their id in a full XAUTOCLAIM reply (Redis 7
#: drops them from the pending list itself). Run as a script so the raw
#: reply, cursor included, reaches the caller.
RECLAIM_IDS: Final[str] = """\
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4],
                     'COUNT', ARGV[5], 'JUSTID')
return {r[1], r[2]}
"""
