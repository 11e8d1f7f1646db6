"""Sending each request to one replica of a model: balancing (strategies), health (health), retries (retry)."""
