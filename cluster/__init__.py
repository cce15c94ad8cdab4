"""Hosts, transports and process supervision: a small toolkit that knows nothing of MXNet."""
