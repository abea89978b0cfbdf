"""HTTP: the app factory, dependencies, the edge (size limits, which listener serves
what), request checks, routes, and answers → responses (`responses.py`). The serving
core below it is `serving/`."""
