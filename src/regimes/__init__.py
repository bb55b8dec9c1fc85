"""regimes: watch a network's activation regimes change during training."""

from regimes import analysis, detect, geometry
from regimes.analysis import summarize
from regimes.tracker import NoActivationSitesError, ProbeError, Tracker

__all__ = ["Tracker", "summarize", "analysis", "detect", "geometry", "ProbeError", "NoActivationSitesError"]
__version__ = "0.1.0"
