"""Discrete units: the units file format (the contract between stages), encoders, k-means, extraction, dedup."""
