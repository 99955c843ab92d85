"""Evaluation of location embeddings: metrics against baselines, similarity search and HTML pages."""
