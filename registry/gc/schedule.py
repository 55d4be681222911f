"""Background collection: every `gc.interval_seconds` each worker of each replica offers to
run, and with `gc.exclusive` (the default) only the first within the interval does, so that
the database carries one collector's batches at a time. (Runs of several collectors at once
are safe all the same: their batches skip each other's locked rows.) With `gc.enabled` off,
only abandoned uploads are still dropped, as before collection existed."""

from __future__ import annotations

import asyncio
import logging
import random

from registry.gc.collector import Collector

log = logging.getLogger("registry.gc")

UPLOAD_UPKEEP_SECONDS = 600.0  # upload expiry alone, when collection is off
FIRST_RUN_SECONDS = 60.0  # the first run, soon after start (and spread among replicas)


async def run_periodically(collector: Collector, enabled: bool, interval_seconds: float) -> None:
    await asyncio.sleep(random.uniform(0.5, 1.0) * min(interval_seconds, FIRST_RUN_SECONDS))
    while True:
        try:
            if enabled:
                await collector.run_scheduled()
            else:
                await collector.expire_uploads()
        except Exception:  # upkeep must never take the server down
            log.exception("background garbage collection failed")
        await asyncio.sleep(interval_seconds if enabled else UPLOAD_UPKEEP_SECONDS)
