"""The trainer: backbones, one file per method, and the training loop."""
