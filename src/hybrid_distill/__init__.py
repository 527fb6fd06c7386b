"""Hybrid Distillation (Shi et al., ICLR 2024) for timm Vision Transformers.

The Python API (`hybrid_distill.api`): train, load_student, evaluate, analyze, export. They are
imported on first use, so `import hybrid_distill` stays light (no torch at import).
"""

__version__ = "0.1.0"
__all__ = ["train", "load_student", "evaluate", "analyze", "export", "__version__"]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'hybrid_distill' has no attribute '{name}'")
