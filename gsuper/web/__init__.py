"""Watching the master over HTTP: /metrics, /status.json, the probes and the dashboard."""
