"""ferdata: turn facial-expression datasets into ambiguity-aware ones."""
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

__version__ = "0.1.0"

from ferdata.softlabels import load_soft_labels  # noqa: E402

__all__ = ["__version__", "load_soft_labels"]
