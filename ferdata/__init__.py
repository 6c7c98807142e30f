"""ferdata: turn facial-expression datasets into ambiguity-aware ones.

Layers, bottom up: ``ferdata.core`` (errors, classes, the table registry, I/O, validation, settings,
stage contracts, shard reading; it imports no stage), one module per data stage (``download``,
``align``, ``shard``, ``va``, ``noise``, ``sample``, ``export``, ``report``), ``ferdata.adapters`` (one
file per dataset), ``ferdata.train`` (backbones, methods, the loop, the prior and the VA regressor),
and the ``ferdata`` command (``cli``), a thin layer over the stages.
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

__version__ = "0.1.0"
__all__ = ["__version__", "load_soft_labels"]


def __getattr__(name: str):
    """``ferdata.load_soft_labels``, imported on first use so that ``import ferdata`` costs nothing."""
    if name == "load_soft_labels":
        from ferdata.softlabels import load_soft_labels

        return load_soft_labels
    raise AttributeError(f"module 'ferdata' has no attribute {name!r}")
