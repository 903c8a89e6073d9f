"""Safety: adversarial attacks, privacy leakage, the constraint spec and the metric suite."""
