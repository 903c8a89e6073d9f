"""Tracking: the MLflow run tree, model registry and the plots reviewers read."""
