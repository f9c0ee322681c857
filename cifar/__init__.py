"""cifar-ray: CIFAR-10 training with Ray Train and bulk image classification with Ray Data."""

__version__ = "0.1.0"
