"""Personal data in what tenants send: each tenant's policy (`policy.py`), detection
with Presidio's pattern recognizers (`detector.py`), and masking with numbered
placeholders that are restored in the answer, streams included (`masking.py`)."""
