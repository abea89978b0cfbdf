"""LoRA adapters: validation against the base (spec.py) and the registry of what
is served and where it is loaded (registry.py)."""
