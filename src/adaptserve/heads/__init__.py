"""Classifier heads: multinomial logistic regression over one embedding model's vectors,
stored, versioned and applied with numpy (`artifact.py`, `catalog.py`)."""
