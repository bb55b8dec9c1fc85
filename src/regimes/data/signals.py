"""One-dimensional signals: MNIST-1D, generated procedurally (no download)."""

from __future__ import annotations

import os
import random

import numpy as np

from regimes.data.registry import make_splits, register
from regimes.data.sources import search_roots
from regimes.extras import require


@register("mnist1d", "MNIST-1D (generated offline by the mnist1d package): 40 samples, 10 classes")
def load_mnist1d(data_dir=None, split_seed: int = 0):
    """MNIST-1D made with the ``mnist1d`` package's default arguments and seed ``split_seed``.

    Its own test split (1000 of the 5000 signals) is the validation split.
    Generating takes a few seconds, so the arrays are cached as
    ``<root>/mnist1d/mnist1d-seed<seed>.npz`` under the first search root
    (``data_dir``, ``$REGIMES_DATA`` or ``~/.cache/regimes``); delete the file
    to regenerate it.
    """
    cache = search_roots(data_dir)[0] / "mnist1d" / f"mnist1d-seed{split_seed}.npz"
    if cache.is_file():
        with np.load(cache) as stored:
            arrays = {key: stored[key] for key in stored.files}
    else:
        arrays = _generate(split_seed)
        _save_quietly(cache, arrays)
    return make_splits(
        "mnist1d",
        (arrays["x"], arrays["y"]),
        (arrays["x_test"], arrays["y_test"]),
        10,
        f"mnist1d (generated, seed {split_seed}; cache {cache})",
    )


def _generate(seed: int) -> dict[str, np.ndarray]:
    mnist1d = require("mnist1d.data", "the mnist1d data set")
    args = mnist1d.get_dataset_args()
    args.seed = seed
    # make_dataset seeds the global numpy and random generators; give the caller theirs back.
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        data = mnist1d.make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return {
        "x": data["x"].astype(np.float32),
        "y": data["y"].astype(np.int64),
        "x_test": data["x_test"].astype(np.float32),
        "y_test": data["y_test"].astype(np.int64),
    }


def _save_quietly(path, arrays) -> None:
    """Write the cache atomically; an unwritable directory just means no cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        with open(partial, "wb") as file:
            np.savez(file, **arrays)
        os.replace(partial, path)
    except OSError:
        pass
