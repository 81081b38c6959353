"""Image embedding pipeline: manifest of image URIs in, Parquet embeddings and failures out."""
