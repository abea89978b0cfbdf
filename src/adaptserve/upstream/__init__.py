"""The data plane seen from the gateway: vLLM servers over HTTP (client.py), the
pool that picks a healthy one (pool.py) and the supervisor of a local child
(supervisor.py)."""
