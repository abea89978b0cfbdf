"""adaptserve: an OpenAI-compatible gateway and control plane over vLLM, serving one
base model and many LoRA adapters."""

__version__ = "0.1.0"
