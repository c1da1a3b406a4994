"""mamlpp: MAML++ ("How to train your MAML", Antoniou, Edwards & Storkey, ICLR 2019)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
