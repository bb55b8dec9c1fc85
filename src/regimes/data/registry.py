"""The data-set registry: a name maps to a loader and a one-line description.

A loader takes ``(data_dir, split_seed)`` and returns :class:`Splits`. Loaders
register themselves with :func:`register` when their family module is imported
(``regimes.data`` imports them all), so a new data set only needs a decorator.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import TensorDataset

from regimes.extras import require
from regimes.registry import Registry

HOLDOUT_FRACTION = 0.2  # for data sets without an official test split


@dataclass
class Splits:
    """A data set ready for training: float32 inputs and int64 labels.

    Other layouts (the task that reads them says how):
    - large image sets: uint8 images [N, C, H, W] with ``pixel_mean`` and
      ``pixel_std``; they are normalised batch by batch on the device.
    - text classification: (input_ids [N, T], attention_mask [N, T], labels [N]).
    - language modelling: (input_ids [N, T],) blocks of a token stream.
    - sequence to sequence: (input_ids [N, T], attention_mask [N, T], target_ids [N, T_out]).
    Token ids are below ``vocab_size``; 0 is padding.
    """

    name: str
    train: TensorDataset  # (inputs [N, *input_shape] float32, labels [N] int64)
    val: TensorDataset
    input_shape: tuple[int, ...]  # per sample, e.g. (30,), (1, 28, 28), (3, 32, 32)
    num_classes: int  # language models: the vocabulary size
    source: str  # e.g. "scikit-learn", "local: /path", "hub: uoft-cs/cifar10"
    vocab_size: int = 0  # text: the tokenizer's vocabulary size; 0 for other data
    pixel_mean: tuple[float, ...] | None = None  # uint8 images: per-channel mean and std
    pixel_std: tuple[float, ...] | None = None  # of pixels scaled to [0, 1]


Loader = Callable[[str | os.PathLike | None, int], Splits]


class _Entry(NamedTuple):
    loader: Loader
    description: str


DATASETS: Registry[_Entry] = Registry("data set")


def register(name: str, description: str) -> Callable[[Loader], Loader]:
    """Decorator: register ``loader(data_dir, split_seed) -> Splits`` under ``name``."""

    def decorate(loader: Loader) -> Loader:
        DATASETS.register(name, _Entry(loader, description))
        return loader

    return decorate


def list_datasets() -> list[str]:
    """The registered data-set names, sorted."""
    return DATASETS.names()


def describe_dataset(name: str) -> str:
    """The one-line description of a registered data set."""
    return DATASETS.get(name).description


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, split_seed: int = 0, **options) -> Splits:
    """Load a registered data set as train and validation tensors.

    Where the data set has an official test split (adult, har, mnist, cifar10,
    cifar100, mnist1d) that split is the validation split, as in the study,
    which reports the best validation score. Otherwise 20% of the data is held
    out, stratified by class, with ``split_seed``. The same call always returns
    the same tensors.

    Data that must come from outside is looked for under ``data_dir``, then
    ``$REGIMES_DATA``, then ``~/.cache/regimes``, then on the Hugging Face hub
    if the ``datasets`` library is installed; if all fail,
    :class:`~regimes.data.DataNotFoundError` says where it looked and how to
    get the files. Nothing is ever downloaded except through ``datasets``.

    ``options`` go to the loader (a run config's ``data_args``): for text, the
    tokenizer's ``vocab_size`` and the sequence lengths; for large images,
    ``image_size``.
    """
    return DATASETS.get(name).loader(data_dir, split_seed, **options)


# ---- helpers shared by the loaders -------------------------------------------


def make_splits(name, train, val, num_classes: int, source: str) -> Splits:
    """Wrap ``(inputs, labels)`` pairs (numpy arrays or tensors) as :class:`Splits`."""
    x_train, y_train = _as_tensors(*train)
    x_val, y_val = _as_tensors(*val)
    return Splits(
        name=name,
        train=TensorDataset(x_train, y_train),
        val=TensorDataset(x_val, y_val),
        input_shape=tuple(x_train.shape[1:]),
        num_classes=num_classes,
        source=source,
    )


def _as_tensors(inputs, labels) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.as_tensor(inputs, dtype=torch.float32),
        torch.as_tensor(np.asarray(labels), dtype=torch.int64),
    )


def holdout(inputs: np.ndarray, labels: np.ndarray, seed: int):
    """Hold out 20% stratified by class: ``(x_train, y_train), (x_val, y_val)``."""
    train_test_split = require("sklearn.model_selection", "holding out a validation split").train_test_split
    x_train, x_val, y_train, y_val = train_test_split(
        inputs, labels, test_size=HOLDOUT_FRACTION, stratify=labels, random_state=seed
    )
    return (x_train, y_train), (x_val, y_val)


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Scale every column to zero mean and unit variance using TRAIN statistics only."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # a constant column stays constant instead of NaN
    return [(x - mean) / std for x in (train, *others)]
