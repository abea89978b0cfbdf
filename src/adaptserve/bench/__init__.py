"""The throughput benchmark harness (`adaptserve bench`): a load generator, the
scenarios it runs side by side, the plain transformers+peft baseline server, reports,
and the simulated engines of the routing scenario."""

SCENARIOS = ("gateway", "adapters", "shape", "peft", "classify", "lora")  # run in this order by default
SIMULATED = ("routing",)  # on simulated engines: no model, no vLLM; run only when named
