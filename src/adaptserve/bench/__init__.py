"""The throughput benchmark harness (`adaptserve bench`): a load generator, the
scenarios it runs side by side, the plain transformers+peft baseline server, reports,
the simulated engines of the routing scenario, and the embeddings scenario's own server."""

SCENARIOS = ("gateway", "adapters", "shape", "peft", "classify", "lora")  # run in this order by default
SIMULATED = ("routing",)  # on simulated engines: no model, no vLLM; run only when named
OWN_SERVER = ("embeddings",)  # starts its own gateway (the LLM and an embedding model); run only when named
