"""Training: one segment of a model's training run, and one environment step."""
