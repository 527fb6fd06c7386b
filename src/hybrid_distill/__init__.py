"""Hybrid Distillation (Shi et al., ICLR 2024) for timm Vision Transformers."""

__version__ = "0.1.0"
