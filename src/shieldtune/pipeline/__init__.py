"""Kubeflow Pipelines workflow: components, pipelines, compile / local run / upload / schedule."""

#: The component image; ``shieldtune pipeline compile --base-image`` overrides it.
DEFAULT_BASE_IMAGE = "shieldtune:0.1.0-cpu"
