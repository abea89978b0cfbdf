"""Who is calling: API keys and the tenant they belong to. For now one key, the
`default` tenant's; per-tenant keys, aliases, usage and quotas build on this seam."""
