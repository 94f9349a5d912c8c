"""Stable Diffusion 1.x in PyTorch, ours: tokenizer, CLIP text encoder, UNet, VAE, samplers, checkpoint loading.

This package knows nothing of nodes, workflows or servers."""

from .checkpoint import CheckpointError, StableDiffusion, load_checkpoint
from .sampling import sample

__all__ = ["CheckpointError", "StableDiffusion", "load_checkpoint", "sample"]
