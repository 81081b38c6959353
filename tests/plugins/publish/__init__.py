"""Tests of publishing to pgvector and BigQuery."""
