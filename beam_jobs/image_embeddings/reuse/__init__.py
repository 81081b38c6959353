"""Reuse instead of recompute: earlier runs of one fingerprint lend embeddings by digest."""
