"""Pure OCI parsing: digests, names, references, media types and manifests.

Standard library only, no I/O: both the server and the runtime import it.
"""
