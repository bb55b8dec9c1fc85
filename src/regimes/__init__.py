"""regimes: watch a network's activation regimes change during training."""

from regimes import analysis, detect, geometry
from regimes.analysis import summarize
from regimes.tracker import NoActivationSitesError, ProbeError, Tracker

__all__ = ["Tracker", "Run", "summarize", "analysis", "detect", "geometry", "ProbeError", "NoActivationSitesError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # `Run` writes run directories (parquet: the study extra); imported when first asked for,
    # so that `import regimes` needs only torch and numpy.
    if name == "Run":
        from regimes.run import Run

        return Run
    raise AttributeError(f"module 'regimes' has no attribute {name!r}")
