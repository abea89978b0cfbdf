"""`adaptserve fit`: from a labelled file to the best served classifier. Folds
(`folds.py`), the baselines a practitioner tries first, tuned inside each fold
(`baselines.py`), the LLM candidates scored through the running server
(`candidates.py`), the run with its budget, resumable state and refit (`run.py`),
fit's nested picks (`nested.py`), the figures per candidate (`results.py`), the paired
verdict (`verdict.py`), and its report (`report.py`)."""
