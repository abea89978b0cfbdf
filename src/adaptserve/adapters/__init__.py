"""LoRA adapters: validation against the base (spec.py), upload archives (archive.py),
the content-addressed store (store.py), the catalog of versions and what aliases
resolve to (catalog.py), who owns a name (ownership.py), each tenant's storage
quota (quota.py), and residency: what is loaded on which upstream, leases,
eviction and retirement (residency.py)."""
