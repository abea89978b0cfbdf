"""The throughput benchmark harness (`adaptserve bench`): a load generator, the
scenarios it runs side by side, the plain transformers+peft baseline server, reports."""

SCENARIOS = ("gateway", "adapters", "shape", "peft", "classify", "lora")  # run in this order by default
