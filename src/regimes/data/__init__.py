"""Data sets, one registry: ``load_dataset(name)`` returns train and validation tensors.

>>> from regimes.data import list_datasets, load_dataset
>>> splits = load_dataset("breast-cancer")
>>> splits.input_shape, splits.num_classes
((30,), 2)

``breast-cancer``, ``digits`` and ``mnist1d`` need no download. The others are
read from local files in their published formats (``data_dir``,
``$REGIMES_DATA`` or ``~/.cache/regimes``) or, when the ``datasets`` library
is installed, from the Hugging Face hub.
"""

# Importing the family modules registers their loaders.
from regimes.data import hub_images, images, signals, tabular, text  # noqa: F401
from regimes.data.registry import Splits, describe_dataset, list_datasets, load_dataset
from regimes.data.sources import DataNotFoundError

__all__ = ["DataNotFoundError", "Splits", "describe_dataset", "list_datasets", "load_dataset"]
