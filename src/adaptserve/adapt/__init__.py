"""Adaptation: datasets and formats (`data.py`); training and distillation come here."""
