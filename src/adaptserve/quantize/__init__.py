"""Quantizing the base model with llm-compressor (GPTQ, AWQ, INT8), in its own virtual
environment: `recipes.py` (schemes, group sizes, what vLLM serves), `env.py` (the
environment and the atomic run), `run.py` (the part that imports llm-compressor)."""
