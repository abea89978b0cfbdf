"""The serving core, below HTTP: the request pipeline (`pipeline.py`: resolve, admit,
lease, meter; `call` → `Answer`, `stream` → `StreamingAnswer`, in `answers.py`), where
an engine call goes and what it survives (`forward.py`: replica, load, retry), the
per-request bounds (`bounds.py`), the stream relays (`relay.py`) and the template
service (`templates.py`). `server/` turns its answers into HTTP responses."""
