"""The ``kubernetes`` step executor: one Kubernetes Job per environment step."""
