"""Models: the registry (architecture name -> builder, input size) and ModelSpec, CIFAR10-quick,
and checkpoints (the one place that calls torch.load)."""
