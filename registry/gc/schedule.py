"""Background collection: a run every `gc.interval_seconds` in each replica (their batches
skip each other's locked rows, so replicas need not agree on who collects). With `gc.enabled`
off, only abandoned uploads are still dropped, as before collection existed."""

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
                await collector.run("schedule")
            else:
                await collector.expire_uploads()
        except Exception:  # upkeep must never take the server down
            log.exception("background garbage collection failed")
        await asyncio.sleep(interval_seconds if enabled else UPLOAD_UPKEEP_SECONDS)
