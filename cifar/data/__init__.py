"""Training data: sources (CIFAR-format files, image folders, generated sets) read into an
in-memory ImageData, the loaders that shard it, and batch transforms."""
