"""`adaptserve fit`: from a labelled file to the best served classifier. Folds
(`folds.py`), the baselines a practitioner tries first (`baselines.py`), the LLM
candidates scored through the running server (`candidates.py`), the run with its
budget, resumable state and choice (`run.py`), and its report (`report.py`)."""
