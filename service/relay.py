"""The outbox relay: sends the job messages that were written with their state change but
not confirmed sent (the broker was down, the writer died right after its commit), and,
when the broker restarted, every message no task took yet (it may have lost its queues).
The runner runs it every `SYNTH_OUTBOX_RELAY_SECONDS`; so may any other process (several
relays are safe: `dicom_synth.jobstate.relay`). A failing broker or job store is logged
and tried again next round, never raised."""

from __future__ import annotations

import logging

import redis

from dicom_synth.jobstate import redispatch_untaken, relay
from dicom_synth.jobstore import JobStore
from dicom_synth.settings import Settings

log = logging.getLogger("dicom_synth.relay")


def broker_run_id(url: str) -> str | None:
    """The Redis server's run_id (new at every start of the server), or None when it does
    not answer."""
    from service.completion_state import redis_client

    try:
        client = redis_client(url)
        client.connection_pool.connection_kwargs.update(socket_timeout=2, socket_connect_timeout=2)
        return str(client.info("server")["run_id"])
    except (redis.RedisError, OSError, KeyError) as exc:
        log.debug("broker not answering: %s", exc)
        return None


class OutboxRelay:
    """One relay: `tick()` once per round."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.run_id: str | None = None  # the broker's, when last seen

    def tick(self) -> int:
        """One round; returns how many messages it sent."""
        from service.queue import app

        run_id = broker_run_id(self.settings.broker_url) if self.settings.broker_url else None
        if run_id is None and self.settings.broker_url:
            return 0  # the broker is down: nothing can be sent; the messages stay in the outbox
        try:
            store = JobStore(self.settings.jobs_db_url)
            sent = 0
            if run_id is not None and self.run_id is not None and run_id != self.run_id:
                log.warning("the broker restarted (run_id %s → %s): resending what no task took",
                            self.run_id, run_id)
                sent += len(redispatch_untaken(store, app.send_task))
            self.run_id = run_id or self.run_id
            return sent + len(relay(store, app.send_task))
        except Exception:
            log.exception("outbox relay round failed; trying again")
            return 0
