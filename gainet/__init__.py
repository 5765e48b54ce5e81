"""gainet: GAIN (Guided Attention Inference Network) in PyTorch."""

__version__ = "0.1.0"
