"""Compressing the base model by structural depth pruning: `scoring.py` (how much each
decoder layer changes its input: ShortGPT's block influence; held-out perplexity),
`surgery.py` (a stock model folder without the dropped layers, from the safetensors
directly), `heal.py` (logit distillation from the unpruned model, resumable),
`data.py` (calibration and healing text, batches), `prune.py` (the atomic run and
its manifest). peft/transformers/torch are imported here, never by the gateway."""
