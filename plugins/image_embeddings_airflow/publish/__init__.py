"""Serving: a validated day published to pgvector and BigQuery, replacing exactly that day."""
