"""Airflow-side logic of image-embeddings: settings, storage, manifest, validation, reduction."""
