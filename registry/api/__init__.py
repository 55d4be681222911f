"""HTTP handlers of the OCI Distribution API, one module per resource; `routes.py` lists them."""
