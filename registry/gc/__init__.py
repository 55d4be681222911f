"""Garbage collection: online, while pushes and pulls go on, on any number of replicas.

What goes
---------
- A blob that no manifest in any repository references, and that nothing happened to for
  `gc.blob_grace_seconds` (no upload, mount, unlink or deleted manifest naming it), is
  deleted from storage and from the database, links and all.
- With `gc.untagged_manifests`, a manifest that no tag reaches (directly, through a kept
  index, or as the subject or a referrer of a kept manifest: `metadata/reachability.py`)
  for `gc.manifest_grace_seconds`.
- Upload sessions untouched for `limits.upload_expiry_seconds`, with their bytes (and, on
  S3, their multipart uploads, through `StorageDriver.delete`), and the multipart uploads a
  push that died midway left at a blob's key (`StorageDriver.abort_abandoned`).

Nothing is found by walking storage or every table: deletes and new blobs feed review queues
(`gc_blob_reviews`, `gc_manifest_reviews`: one entry per digest with the time of its latest
event), and a collection looks only at entries whose grace period has passed, in batches
(`gc.batch_size`), each its own short transaction, pausing between batches three times as
long as the batch took, so that pushes and pulls never wait long (on SQLite the transactions
run on the event loop; their WAL checkpoints do not: metadata/checkpoint.py). `registry fsck`
is the full check.

Why no referenced blob is ever lost
-----------------------------------
The database decides; bytes follow. Three rules, in `metadata/reviews.py`, `metadata/store.py`
and `metadata/gcstore.py`:

1. The collector marks before it deletes. In one transaction it takes due review entries,
   locks their blob rows (PostgreSQL `FOR UPDATE SKIP LOCKED`: rows a push holds are left for
   the next run), and only then checks, in statements of their own, that no manifest refers
   to them (under READ COMMITTED each statement sees everything committed before it; a push
   that committed while the collector waited is seen). Unreferenced rows get
   `deleting_since` set and lose their repository links, and the transaction commits. Then
   the bytes are deleted, in one batch call of the driver (`delete_many`: S3 DeleteObjects,
   1,000 keys a request), and only then, in a third transaction, the rows.
   On SQLite the `FOR` clauses do nothing and are not needed: every write transaction begins
   with `BEGIN IMMEDIATE`, so the collector's transaction and a push's never interleave.

2. A manifest push checks its blobs and child manifests inside the transaction that stores
   it, share-locking them (`FOR SHARE`) and requiring `deleting_since IS NULL`. Either the
   push locks first, and the collector skips those rows (or waits and then sees the new
   reference), or the collector marks first, and the push then finds the blob gone and
   answers MANIFEST_BLOB_UNKNOWN: the client pushes the blob again and retries, and that
   succeeds. A manifest is never stored pointing at a blob that is being deleted. Mounts
   and unlinks take the same row lock, and a mount links only a live row.

3. An upload never acknowledges bytes a collector may be deleting (`api/uploads.py`):
   - verify the digest of the bytes, still in the upload's own place;
   - reserve: lock the blob row; if it is marked `deleting_since`, wait until the collector
     has removed it (its bytes are going now); else create it (a new random `incarnation`,
     no repository links yet, so nothing can see it) or keep it, and restart its grace
     period. From here on no collector will mark this row for a grace period;
   - move the bytes to the blob's key (the key's old copy, if any, is not being deleted: no
     marked row exists), or, on S3, complete them where the upload wrote them;
   - finish: lock the row again and link it into the repository only if it is still the
     same incarnation and unmarked. Otherwise it was collected in between (possible only
     with a grace period near zero) and the answer is 503 UNAVAILABLE, never a 201 for bytes
     that may be gone. Bytes left in place become the row's `location` here, unless it has
     one (those bytes are the blob's; these are dropped), and only while the upload's
     session lasts: an expired session's bytes are being deleted with it.
   So the bytes under a blob key (and at its row's location, removed with it) are removed
   only while its row is marked, and a marked row is never given back to an upload: a blob
   re-uploaded while its old copy is being deleted waits, then writes its bytes afresh.
   `registry fsck --repair` removes orphan bytes through the same marks.

The rows of a collector that died between marking and forgetting stay marked: a later run
(of any replica) takes over marks older than `DELETE_LEASE` and finishes them. Uploads of
such a blob wait for at most 30 s and then get 503 until then.

A grace period protects what is in flight: an image's blobs are uploaded before the
manifest that names them (the default, a day, outlasts any push); the manifest grace does
the same for the platform manifests of a multi-platform image, pushed before their index.
"""
