"""The HTTP gateway: app factory, dependencies, the one request pipeline, routes."""
