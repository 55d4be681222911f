"""Lifecycle policies: retention, immutable tags, namespace quotas, pull statistics.

    rules.py       the rules as data; globs, sizes, durations; which policy governs (pure)
    management.py  checked rules from CLI flags, admin API bodies and config entries
    service.py     the rules of the database over the config's; push and delete checks
    retention.py   which tags a retention policy keeps, and why (pure)
    runner.py      a retention run (with every garbage collection, or alone)
    pulls.py       pull counts buffered per process, flushed in batches
    usage.py       usage and tag statistics as rows for the CLI and the admin API
    cli.py         registry retention|immutable|quota|usage|pulls
    admin_api.py   the same under /auth/admin/

The SQL is in registry/metadata/ (policystore.py, usage.py, retentionstore.py).
"""
