"""The whole distribution API in one table: path, handler, methods.

Repository names contain slashes, so `{name:path}` is greedy and each route's fixed suffix
(`/blobs/uploads/`, `/manifests/`, ...) decides where the name ends.
"""

from __future__ import annotations

from starlette.routing import Route

from registry.api import base, blobs, listings, manifests, referrers, uploads

ROUTES = [
    Route("/v2/", base.api_version, methods=["GET"]),
    Route("/v2/_catalog", listings.catalog, methods=["GET"]),
    Route("/v2/{name:path}/tags/list", listings.list_tags, methods=["GET"]),
    Route("/v2/{name:path}/blobs/uploads/", uploads.start_upload, methods=["POST"]),
    Route("/v2/{name:path}/blobs/uploads", uploads.start_upload, methods=["POST"]),
    Route("/v2/{name:path}/blobs/uploads/{upload_id}", uploads.upload_status, methods=["GET"]),
    Route("/v2/{name:path}/blobs/uploads/{upload_id}", uploads.upload_chunk, methods=["PATCH"]),
    Route("/v2/{name:path}/blobs/uploads/{upload_id}", uploads.finish_upload, methods=["PUT"]),
    Route("/v2/{name:path}/blobs/uploads/{upload_id}", uploads.cancel_upload, methods=["DELETE"]),
    Route("/v2/{name:path}/blobs/{digest}", blobs.get_blob, methods=["GET", "HEAD"]),
    Route("/v2/{name:path}/blobs/{digest}", blobs.delete_blob, methods=["DELETE"]),
    Route("/v2/{name:path}/manifests/{reference}", manifests.get_manifest, methods=["GET", "HEAD"]),
    Route("/v2/{name:path}/manifests/{reference}", manifests.put_manifest, methods=["PUT"]),
    Route("/v2/{name:path}/manifests/{reference}", manifests.delete_manifest, methods=["DELETE"]),
    Route("/v2/{name:path}/referrers/{digest}", referrers.list_referrers, methods=["GET"]),
]
