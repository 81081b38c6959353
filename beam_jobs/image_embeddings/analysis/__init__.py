"""A validated day's products: PCA, neighbours index, duplicates, drift, earlier days."""
