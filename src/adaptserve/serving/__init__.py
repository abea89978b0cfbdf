"""The serving core, below HTTP: the request pipeline (`pipeline.py`: resolve, admit,
lease, load, forward, meter; `call` → `Answer`, `stream` → `StreamingAnswer`), the
per-request bounds (`bounds.py`), the stream relays (`relay.py`) and the template
service (`templates.py`). `server/` turns its answers into HTTP responses."""
