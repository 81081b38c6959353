"""Benchmarks of the embedding pipeline: throughput, start-up, memory and storage (`make bench`)."""
