"""Large image data sets: TinyImageNet and Food-101, kept as uint8.

Decoded images stay uint8 ``[N, 3, H, W]`` (TinyImageNet as float32 would take
5 GB, Food-101 at 224x224 60 GB); the task normalises each batch on the device
with the split's ``pixel_mean`` and ``pixel_std``. Decoding needs Pillow.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from regimes.data.registry import Splits, register
from regimes.data.sources import fetch
from regimes.extras import require

TINYIMAGENET_MEAN, TINYIMAGENET_STD = (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # used for Food-101


def decode_images(sources: Sequence, size: int) -> np.ndarray:
    """Paths or PIL images -> uint8 [N, 3, size, size]: RGB, shorter side resized to ``size``, centre crop."""
    out = np.empty((len(sources), 3, size, size), dtype=np.uint8)

    def one(i: int) -> None:
        out[i] = _square_rgb(sources[i], size).transpose(2, 0, 1)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # Pillow decodes without the GIL
        list(pool.map(one, range(len(sources))))
    return out


def _square_rgb(source, size: int) -> np.ndarray:
    Image = require("PIL.Image", "decoding images")

    image = Image.open(source) if isinstance(source, (str, Path)) else source
    image = image.convert("RGB")
    if image.size != (size, size):
        w, h = image.size
        scale = size / min(w, h)
        image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
        w, h = image.size
        left, top = (w - size) // 2, (h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8)  # [size, size, 3]


def _image_splits(name, train, val, num_classes, mean, std, source) -> Splits:
    (x_train, y_train), (x_val, y_val) = train, val
    as_tensors = lambda x, y: (torch.from_numpy(x), torch.as_tensor(np.asarray(y), dtype=torch.int64))  # noqa: E731
    return Splits(
        name,
        TensorDataset(*as_tensors(x_train, y_train)),
        TensorDataset(*as_tensors(x_val, y_val)),
        tuple(x_train.shape[1:]),
        num_classes,
        source,
        pixel_mean=mean,
        pixel_std=std,
    )


def _hub_split(table, size: int, label_column: str = "label"):
    return decode_images(list(table["image"]), size), np.asarray(table[label_column], dtype=np.int64)


# ---- TinyImageNet ------------------------------------------------------------------------------


@register("tinyimagenet", "TinyImageNet (tiny-imagenet-200 folder or hub): 3x64x64, 200 classes, uint8")
def load_tinyimagenet(data_dir=None, split_seed: int = 0, image_size: int = 64):
    """The ``tiny-imagenet-200`` layout; its labelled val set is the validation split."""
    (train, val), source = fetch(
        "tinyimagenet",
        data_dir,
        folders=("tiny-imagenet-200",),
        required=("wnids.txt", "val/val_annotations.txt"),
        read_local=lambda d: _read_tinyimagenet(d, image_size),
        how_to_get=(
            "download http://cs231n.stanford.edu/tiny-imagenet-200.zip and extract it so that "
            "<root>/tiny-imagenet-200/wnids.txt exists."
        ),
        hub_id="zh-plus/tiny-imagenet",
        read_hub=lambda hub: (_hub_split(hub["train"], image_size), _hub_split(hub["valid"], image_size)),
    )
    return _image_splits("tinyimagenet", train, val, 200, TINYIMAGENET_MEAN, TINYIMAGENET_STD, source)


def _read_tinyimagenet(directory: Path, size: int):
    wnids = (directory / "wnids.txt").read_text().split()
    label = {wnid: i for i, wnid in enumerate(wnids)}  # the order of wnids.txt
    train_paths, train_labels = [], []
    for wnid in wnids:
        for path in sorted((directory / "train" / wnid / "images").glob("*.JPEG")):
            train_paths.append(path)
            train_labels.append(label[wnid])
    val_paths, val_labels = [], []
    for line in (directory / "val" / "val_annotations.txt").read_text().splitlines():
        if line.strip():
            filename, wnid = line.split("\t")[:2]
            val_paths.append(directory / "val" / "images" / filename)
            val_labels.append(label[wnid])
    return (decode_images(train_paths, size), train_labels), (decode_images(val_paths, size), val_labels)


# ---- Food-101 ------------------------------------------------------------------------------------


@register("food101", "Food-101 (food-101 folder or hub): RGB resized to 3x224x224 (image_size), 101 classes, uint8")
def load_food101(data_dir=None, split_seed: int = 0, image_size: int = 224):
    """The ``food-101`` layout (``meta/train.txt``, ``meta/test.txt``, ``images/<class>/<id>.jpg``);
    the official test split is the validation split. Shorter side resized to ``image_size``, centre crop."""
    (train, val), source = fetch(
        "food101",
        data_dir,
        folders=("food-101",),
        required=("meta/classes.txt", "meta/train.txt", "meta/test.txt"),
        read_local=lambda d: _read_food101(d, image_size),
        how_to_get=(
            "download http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz and extract it so that "
            "<root>/food-101/meta/train.txt exists."
        ),
        hub_id="ethz/food101",
        read_hub=lambda hub: (_hub_split(hub["train"], image_size), _hub_split(hub["validation"], image_size)),
    )
    return _image_splits("food101", train, val, 101, IMAGENET_MEAN, IMAGENET_STD, source)


def _read_food101(directory: Path, size: int):
    classes = (directory / "meta" / "classes.txt").read_text().split()
    label = {name: i for i, name in enumerate(classes)}

    def split(listing: str):
        ids = (directory / "meta" / listing).read_text().split()  # "apple_pie/1005649"
        paths = [directory / "images" / f"{image_id}.jpg" for image_id in ids]
        return decode_images(paths, size), [label[image_id.split("/")[0]] for image_id in ids]

    return split("train.txt"), split("test.txt")
