"""hftrain: Hugging Face Accelerate training scripts for object detection."""

__version__ = "0.1.0"
