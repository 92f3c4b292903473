"""Lua scripts the Redis sink runs server-side."""

from __future__ import annotations

import hashlib
from typing import Final

__all__ = ["ALERT_ONCE", "ALERT_ONCE_SHA", "RECLAIM_IDS"]

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
