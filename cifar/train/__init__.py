"""Training: the config, the driver (TorchTrainer), the Ray Train worker, the pure-torch engine,
and what a run writes."""
