"""Background upkeep: uploads abandoned by their clients are dropped with their bytes (on S3,
their multipart uploads are aborted), and so are S3 multipart uploads that a process which
died mid-push left at a blob's key.

Safe with several replicas: each step is idempotent, and a session is removed from the
database before its bytes, so no replica can resume an upload whose bytes are going.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from registry.api.context import Services
from registry.metadata.store import now

log = logging.getLogger("registry.maintenance")


async def purge_stale_uploads(services: Services) -> int:
    """Drop upload sessions untouched for longer than the configured expiry; return how many."""
    cutoff = now() - timedelta(seconds=services.config.limits.upload_expiry_seconds)
    stale = await services.metadata.stale_uploads(cutoff)
    for upload_id in stale:
        await services.metadata.delete_upload(upload_id)
        await services.blobs.delete_upload(upload_id)
    if stale:
        log.info("dropped %d abandoned upload(s)", len(stale))
    abort_abandoned = getattr(services.blobs.driver, "abort_abandoned", None)
    if abort_abandoned is not None:
        aborted = await abort_abandoned(cutoff)
        if aborted:
            log.info("aborted %d multipart upload(s) left at blob keys", aborted)
    return len(stale)


async def run_periodically(services: Services, interval_seconds: float = 600.0) -> None:
    while True:
        try:
            await purge_stale_uploads(services)
        except Exception:  # upkeep must never take the server down
            log.exception("upload purge failed")
        await asyncio.sleep(interval_seconds)
