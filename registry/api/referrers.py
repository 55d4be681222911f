"""`/v2/<name>/referrers/<digest>`: an image index of the manifests whose subject is `digest`."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from registry.api.context import authorize, parse_digest, repository
from registry.oci import mediatypes as mt


async def list_referrers(request: Request) -> Response:
    name = repository(request)
    subject = parse_digest(request.path_params["digest"])
    svc = await authorize(request, name, ("pull",))
    artifact_type = request.query_params.get("artifactType") or None
    found = await svc.metadata.referrers(name, str(subject), artifact_type)
    manifests = [descriptor.to_json() for descriptor in found]
    body = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": manifests}
    headers = {"Content-Type": mt.OCI_INDEX}
    if artifact_type is not None:
        headers["OCI-Filters-Applied"] = "artifactType"
    return Response(json.dumps(body).encode(), 200, headers=headers)
