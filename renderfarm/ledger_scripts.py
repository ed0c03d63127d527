"""The JobManager's transitions as Redis Lua scripts: each checks and moves a job in one server-side step.

A script runs atomically on the server, so the check (the job exists, its state may move, the attempt or rq job
fences) and every write of the move (the job's hash, its attempt history, its heartbeat, the started/queued sets,
its limbo key) happen together, in one round trip: no WATCH, no read before the MULTI, no retry. renderfarm.jobs
runs them through redis-py's `register_script` (EVALSHA, loading the script when the server does not have it).

A script that moves the job answers `ok` followed by the job's hash as the script left it (HGETALL, flat; START puts
the job's scene before it); one that refuses answers why, with what Python needs to raise the same exception as
before (`Refusal`):
  no-such-job | stale-rq-job <current rq job> | stale-attempt <current attempt> <state> | invalid-transition <state>
The checks run in this order, and the first that fails is the answer.

The Lua source of each script is built here from one prelude (the checks, the end of an attempt) and its own body.
Job states and which may follow which come from renderfarm.keys (TRANSITIONS), written into the prelude; rq's own
writes (a retry's new rq job) are made by rq in Python and handed to the script as commands to run once the checks
pass (`RETRY`). Redis is the stack's single server (no Cluster): rq's keys are not declared as KEYS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum

from redis import Redis
from redis.commands.core import Script

from renderfarm.keys import TRANSITIONS, JobState

ERROR_TAIL = 2000  # an attempt record keeps at most the last 2000 characters of its error


class Refusal(StrEnum):
    """Why a script left the job as it was (the first item of its answer); `OK` when it moved it."""

    OK = "ok"
    NO_SUCH_JOB = "no-such-job"
    STALE_RQ_JOB = "stale-rq-job"
    STALE_ATTEMPT = "stale-attempt"
    INVALID_TRANSITION = "invalid-transition"


def _lua(value: str) -> str:
    """A Lua string literal for an ASCII value (a JSON string literal is one)."""
    return json.dumps(value)


def _moves() -> str:
    """keys.TRANSITIONS as a Lua table: MOVES[old][new] is true when old may move to new."""
    rows = []
    for old, news in TRANSITIONS.items():
        allowed = ", ".join(f"[{_lua(new.value)}] = true" for new in sorted(news))
        rows.append(f"[{_lua(old.value)}] = {{{allowed}}}")
    return "{" + ", ".join(rows) + "}"


PRELUDE = f"""
local QUEUED, STARTED = {_lua(JobState.QUEUED)}, {_lua(JobState.STARTED)}
local FINISHED, FAILED = {_lua(JobState.FINISHED)}, {_lua(JobState.FAILED)}
local MOVES = {_moves()}

-- The job's hash as a table (empty when there is no such job).
local function load(key)
  local flat = redis.call('HGETALL', key)
  local h = {{}}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  return h
end

-- nil when the job may move to `new`, else the refusal. `attempt` ('' for none): the job must be started on that
-- attempt (an attempt is current only while the job is started on it: once the reaper has queued the job again, that
-- attempt's late finish or failure is stale too). `rq_job` ('' for none): the job must be carried by that rq job (by
-- default the one named by the mjid).
local function refusal(h, mjid, new, attempt, rq_job)
  if h.state == nil then return {{{_lua(Refusal.NO_SUCH_JOB)}}} end
  if rq_job ~= '' and (h.rq_job or mjid) ~= rq_job then return {{{_lua(Refusal.STALE_RQ_JOB)}, h.rq_job or mjid}} end
  if attempt ~= '' and (tonumber(h.attempts or '0') ~= tonumber(attempt) or h.state ~= STARTED) then
    return {{{_lua(Refusal.STALE_ATTEMPT)}, h.attempts or '0', h.state}}
  end
  if not (MOVES[h.state] or {{}})[new] then return {{{_lua(Refusal.INVALID_TRANSITION)}, h.state}} end
  return nil
end

-- The job's hash as the script left it, after 'ok'.
local function moved(key)
  local answer = redis.call('HGETALL', key)
  table.insert(answer, 1, {_lua(Refusal.OK)})
  return answer
end

-- The last n characters of s (UTF-8), as Python's s[-n:]: lead bytes are counted, continuation bytes are not.
local function tail(s, n)
  if #s <= n then return s end
  local i, count = #s + 1, 0
  while count < n and i > 1 do
    i = i - 1
    local b = string.byte(s, i)
    if b < 128 or b >= 192 then count = count + 1 end
  end
  return string.sub(s, i)
end

-- A started job leaves the started set, its heartbeat goes, and its last attempt record gets its ending.
local function leave_started(mjid, attempts, heartbeat, started, now, outcome, err)
  redis.call('SREM', started, mjid)
  redis.call('DEL', heartbeat)
  local raw = redis.call('LINDEX', attempts, -1)
  if not raw then return end
  local rec = cjson.decode(raw)
  rec.ended_at = now
  rec.outcome = outcome
  if err ~= '' then rec.error = tail(err, {ERROR_TAIL}) end
  redis.call('LSET', attempts, -1, cjson.encode(rec))
end
"""

START = (
    PRELUDE
    + """
-- mark_started. KEYS: hash, attempts, heartbeat, started set, queued set, limbo, scene.
-- ARGV: mjid, rq_job, worker, credential ('' for none), now, heartbeat TTL (ms).
local mjid, rq_job, worker, credential, now, ttl = unpack(ARGV)
local h = load(KEYS[1])
local no = refusal(h, mjid, STARTED, '', rq_job)
if no then return no end
local n = tonumber(h.attempts or '0') + 1
redis.call('HSET', KEYS[1], 'state', STARTED, 'attempts', tostring(n), 'started_at', now, 'worker', worker,
  'credential', credential)
local rec = {attempt = n, queue = h.queue, worker = worker, started_at = now}
if credential ~= '' then rec.credential = credential end
redis.call('RPUSH', KEYS[2], cjson.encode(rec))
redis.call('SET', KEYS[3], tostring(n), 'PX', ttl)
redis.call('SADD', KEYS[4], mjid)
redis.call('SREM', KEYS[5], mjid)
redis.call('DEL', KEYS[6])
local answer = moved(KEYS[1])
table.insert(answer, 2, redis.call('GET', KEYS[7]) or '')
return answer
"""
)
"""mark_started: the job's next attempt begins. Fenced by the rq job that brought it (stale-rq-job), and
only from a state that may become started. Writes the hash (state, attempts, started_at, worker, credential),
appends the attempt's record, sets the heartbeat with its TTL, moves the job from the queued set to the started
set and deletes its limbo key. Its answer has the job's scene (the starter's next read) between `ok` and the hash."""

FINISH = (
    PRELUDE
    + """
-- mark_finished. KEYS: hash, attempts, heartbeat, started set. ARGV: mjid, attempt, now, image, outcome.
local mjid, attempt, now, image, outcome = unpack(ARGV)
local h = load(KEYS[1])
local no = refusal(h, mjid, FINISHED, attempt, '')
if no then return no end
redis.call('HSET', KEYS[1], 'state', FINISHED, 'finished_at', now, 'image', image)
leave_started(mjid, KEYS[2], KEYS[3], KEYS[4], now, outcome, '')
return moved(KEYS[1])
"""
)
"""mark_finished: the current attempt (stale-attempt otherwise) finished with its image. Writes the hash
(state, finished_at, image), ends the attempt's record, deletes the heartbeat and leaves the started set."""

FAIL = (
    PRELUDE
    + """
-- mark_failed. KEYS: hash, attempts, heartbeat, started set, queued set.
-- ARGV: mjid, attempt ('' for none), now, error, outcome (of a started job's attempt).
local mjid, attempt, now, err, outcome = unpack(ARGV)
local h = load(KEYS[1])
local no = refusal(h, mjid, FAILED, attempt, '')
if no then return no end
redis.call('HSET', KEYS[1], 'state', FAILED, 'finished_at', now, 'error', err)
if h.state == STARTED then leave_started(mjid, KEYS[2], KEYS[3], KEYS[4], now, outcome, err) end
redis.call('SREM', KEYS[5], mjid)
return moved(KEYS[1])
"""
)
"""mark_failed: the job fails, from queued or (on its current attempt, when one is given) started. Writes
the hash (state, finished_at, error); a started job's attempt record ends with the outcome and the error, its
heartbeat goes and it leaves the started set; it leaves the queued set."""

RETRY = (
    PRELUDE
    + """
-- retry_on_standard. KEYS: hash, attempts, heartbeat, started set, queued set.
-- ARGV: mjid, attempt, now, outcome, counted ('1' or '0'), max_lost, error ('' for none), queue, rq job id,
-- queued_at, then rq's writes of the new rq job: for each command, its number of words and the words.
local mjid, attempt, now, outcome, counted, max_lost, err, queue, rq_job, queued_at = unpack(ARGV, 1, 10)
local h = load(KEYS[1])
local lost = tonumber(h.lost or '0')
if counted == '1' then lost = lost + 1 end
if counted == '1' and lost > tonumber(max_lost) then
  -- lost too often: the job fails instead, as mark_failed would, with the losses counted
  local no = refusal(h, mjid, FAILED, attempt, '')
  if no then return no end
  local msg = 'worker lost ' .. lost .. ' times (limit ' .. max_lost .. '); last on ' .. (h.worker or '?')
    .. ' (' .. outcome .. ')'
  if err ~= '' then msg = msg .. ': ' .. err end
  redis.call('HSET', KEYS[1], 'state', FAILED, 'finished_at', now, 'error', msg, 'lost', tostring(lost))
  leave_started(mjid, KEYS[2], KEYS[3], KEYS[4], now, outcome, msg)
  redis.call('SREM', KEYS[5], mjid)
  return moved(KEYS[1])
end
local no = refusal(h, mjid, QUEUED, attempt, '')
if no then return no end
redis.call('HSET', KEYS[1], 'state', QUEUED, 'queue', queue, 'rq_job', rq_job, 'queued_at', queued_at)
if counted == '1' then redis.call('HSET', KEYS[1], 'lost', tostring(lost)) end
leave_started(mjid, KEYS[2], KEYS[3], KEYS[4], now, outcome, err)
redis.call('SADD', KEYS[5], mjid)
local i = 11
while i <= #ARGV do
  local words = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + words))
  i = i + words + 1
end
return moved(KEYS[1])
"""
)
"""retry_on_standard: the current attempt (stale-attempt otherwise) ended without finishing (preempted,
interrupted, lost) and the job is queued again on `queue` as the new rq job `rq_job`: the hash (state, queue, rq_job,
queued_at, the lost counter when the loss counts), the attempt's record ended, the heartbeat gone, the job moved
from the started set to the queued set, and rq's own writes for the new rq job (its hash, the queue's push), all in
the one step. A counted loss past max_lost fails the job instead (error "worker lost N times ..."), and rq's writes
are not made."""

HEARTBEAT = f"""
-- heartbeat. KEYS: hash, heartbeat. ARGV: attempt, heartbeat TTL (ms). 1 when refreshed, 0 when the attempt is not
-- the job's current started one.
local state, attempts = unpack(redis.call('HMGET', KEYS[1], 'state', 'attempts'))
if state ~= {_lua(JobState.STARTED)} or tonumber(attempts or '0') ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
"""
"""heartbeat: refresh the job's heartbeat key with its TTL while the attempt is the job's current one
and the job is started; otherwise change nothing."""


# A tiled job (an HD render split into tiles, renderfarm.tiles): the job the user posted (the parent) is never on a
# queue; each tile is a job of its own (a child, with the parent's mjid in its hash) that goes through the scripts
# above like any job, so a preempted or lost tile is retried alone. These move the parent as its tiles go.
TILE_STARTED = f"""
-- tile_started. KEYS: parent hash. ARGV: now. The parent is started when its first tile starts.
if redis.call('HGET', KEYS[1], 'state') == {_lua(JobState.QUEUED)} then
  redis.call('HSET', KEYS[1], 'state', {_lua(JobState.STARTED)}, 'started_at', ARGV[1])
end
return 1
"""

TILE_FINISHED = f"""
-- tile_finished. KEYS: parent hash, the parent's set of finished tiles. ARGV: the tile's index. How many of the
-- parent's tiles have finished, this one counted once; -1 when the parent has ended (a tile failed): nothing to add.
local state = redis.call('HGET', KEYS[1], 'state')
if state == {_lua(JobState.FINISHED)} or state == {_lua(JobState.FAILED)} or not state then return -1 end
redis.call('SADD', KEYS[2], ARGV[1])
return redis.call('SCARD', KEYS[2])
"""
"""tile_finished: one step, so that of two tiles finishing at once exactly one sees the count complete (and
stitches)."""

PARENT_END = f"""
-- parent_end. KEYS: parent hash. ARGV: finished|failed, now, image, error. 1 when the parent ended now, 0 when it had
-- ended already (its end is recorded, and an HD charge refunded, once).
local state = redis.call('HGET', KEYS[1], 'state')
if state == {_lua(JobState.FINISHED)} or state == {_lua(JobState.FAILED)} or not state then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'finished_at', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'image', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
return 1
"""


@dataclass(frozen=True)
class LedgerScripts:
    """The transition scripts registered on one Redis client (no round trip: a script is sent when the server
    does not have it yet). Call one as `scripts.start(keys, args)`."""

    start: Script
    finish: Script
    fail: Script
    retry: Script
    heartbeat: Script
    tile_started: Script
    tile_finished: Script
    parent_end: Script

    @classmethod
    def register(cls, redis: Redis) -> LedgerScripts:
        return cls(
            start=redis.register_script(START),
            finish=redis.register_script(FINISH),
            fail=redis.register_script(FAIL),
            retry=redis.register_script(RETRY),
            heartbeat=redis.register_script(HEARTBEAT),
            tile_started=redis.register_script(TILE_STARTED),
            tile_finished=redis.register_script(TILE_FINISHED),
            parent_end=redis.register_script(PARENT_END),
        )
