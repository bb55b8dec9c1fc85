"""regimes: watch a network's activation regimes change during training."""

from regimes import analysis
from regimes.analysis import summarize

__all__ = ["analysis", "summarize"]
__version__ = "0.1.0"
