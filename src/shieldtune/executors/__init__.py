"""Executors: who runs an environment step (this process, a process pool, Kubernetes Jobs)."""
