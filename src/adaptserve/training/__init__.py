"""Adaptation from a few examples: the training task (task.py), LoRA/AdaLoRA training
(train.py), in-process scoring (scoring.py) and the held-out slice as served
(served.py), distillation from a teacher (distill.py), the adapter manifest
(manifest.py) and exports (export.py). The datasets are `datasets.py`."""
