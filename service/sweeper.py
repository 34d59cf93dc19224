"""Housekeeping on its own: `python -m service.sweeper`, for deployments that run each
part in its own container (docker-compose) instead of under `service.runner`, which runs
the same rounds itself (`Housekeeping`). The stuck-job sweep: jobs unchanged past their
step's deadline — a worker, or a whole node, died and did not come back under its name —
go back on their queues (`dicom_synth.jobstate.requeue_stuck`); and the outbox relay
(`service.relay`). Several may run: a job is requeued only if it is still as it was read,
so each stuck job is sent once per deadline, and relays are safe together."""

from __future__ import annotations

import logging
import sys
import time

from dicom_synth.settings import Settings, get_settings

log = logging.getLogger("dicom_synth.sweeper")


def sweep_once(settings: Settings) -> int:
    """One round; a failing job store or broker is logged (tried again next round), never raised."""
    from service.intake import requeue_stuck_jobs

    try:
        requeued = requeue_stuck_jobs(settings)
    except Exception:
        log.exception("requeueing stuck jobs failed; trying again in %.0f s", settings.stuck_check_seconds)
        return 0
    if requeued:
        log.warning("requeued %d stuck jobs", requeued)
    return requeued


class Housekeeping:
    """The rounds a deployment runs beside its workers, each on its own period: the
    stuck-job sweep (`SYNTH_STUCK_CHECK_SECONDS`, the first after one period) and the
    outbox relay (`SYNTH_OUTBOX_RELAY_SECONDS`, `service.relay`). The runner ticks it; so
    does `main` here. Neither round raises."""

    def __init__(self, settings: Settings) -> None:
        from service.relay import OutboxRelay

        self.settings, self.relay = settings, OutboxRelay(settings)
        self.next_sweep = time.monotonic() + settings.stuck_check_seconds
        self.next_relay = time.monotonic()

    def tick(self) -> None:
        if time.monotonic() >= self.next_sweep:
            self.next_sweep = time.monotonic() + self.settings.stuck_check_seconds
            sweep_once(self.settings)
        if time.monotonic() >= self.next_relay:  # messages not confirmed sent; a broker restart
            self.next_relay = time.monotonic() + self.settings.outbox_relay_seconds
            self.relay.tick()


def main() -> int:
    """Housekeeping until stopped (SIGTERM, Ctrl-C): nothing to clean up, a round cut short
    is done again by the next."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s sweeper %(levelname)s %(message)s")
    settings = get_settings()
    log.info("sweeping stuck jobs every %.0f s (deadlines %s), relaying the outbox every %.0f s",
             settings.stuck_check_seconds, settings.step_deadlines(), settings.outbox_relay_seconds)
    housekeeping = Housekeeping(settings)
    try:
        while True:
            housekeeping.tick()
            time.sleep(0.2)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
