"""Benchmark harness for reading out frozen self-supervised Vision Transformers.

`harness.load_backbone` is imported lazily so that `import harness` (the registry, the results store,
the leaderboard) never pulls in torch.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "load_backbone":
        from harness.models.backbones import load_backbone

        return load_backbone
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
