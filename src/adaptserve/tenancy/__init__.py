"""Who is calling and what they may spend: API keys and the tenant they belong to
(auth.py), tenants and their model aliases (tenants.py), usage metering (usage.py) and
quotas (quotas.py)."""
