"""Image data sets: digits (offline MNIST stand-in), MNIST, CIFAR-10 and CIFAR-100.

Pixels are scaled to [0, 1] and normalised per channel. MNIST and CIFAR use
the usual published training-set constants below; digits uses its own
training-split statistics. No augmentation.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from regimes.data.registry import holdout, make_splits, register
from regimes.data.sources import fetch
from regimes.errors import DamagedInputError, UsageError
from regimes.extras import require

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)  # of its 60,000 training images
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def normalise_uint8(images: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 images [N, C, H, W] -> float32, scaled to [0, 1], then ``(x - mean) / std`` per channel."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255)
    # In place: CIFAR as float32 is ~600 MB, so no second copy.
    x.sub_(torch.tensor(mean).view(1, -1, 1, 1)).div_(torch.tensor(std).view(1, -1, 1, 1))
    return x


# ---- digits -----------------------------------------------------------------------


@register("digits", "scikit-learn 8x8 digits upsampled to 1x28x28 (offline MNIST stand-in), 10 classes")
def load_digits(data_dir=None, split_seed: int = 0):
    """scikit-learn's digits, bilinearly upsampled to 1x28x28 so MNIST models take them.

    Pixels (0..16) are scaled to [0, 1], then normalised with the training
    split's mean and std; 20% is held out with ``split_seed``.
    """
    sklearn_datasets = require("sklearn.datasets", "the digits data set")
    pixels, labels = sklearn_datasets.load_digits(return_X_y=True)  # [N, 64], values 0..16
    (x_train, y_train), (x_val, y_val) = holdout(pixels, labels, split_seed)
    x_train, x_val = _upsample_digits(x_train), _upsample_digits(x_val)
    mean, std = x_train.mean(), x_train.std()
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    return make_splits("digits", (x_train, y_train), (x_val, y_val), 10, "scikit-learn")


def _upsample_digits(pixels: np.ndarray) -> torch.Tensor:
    images = torch.as_tensor(pixels, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    return F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)  # [N, 1, 28, 28]


# ---- MNIST --------------------------------------------------------------------------

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@register("mnist", "MNIST handwritten digits (IDX files or hub): 1x28x28, 10 classes")
def load_mnist(data_dir=None, split_seed: int = 0):
    """MNIST from the four IDX files (each plain or .gz); the official test set is the validation split."""
    (train, val), source = fetch(
        "mnist",
        data_dir,
        folders=("MNIST/raw", "MNIST"),  # the second-level names torchvision uses
        required=MNIST_FILES,
        read_local=_read_mnist_dir,
        how_to_get=(
            "download the four files "
            + ", ".join(f + ".gz" for f in MNIST_FILES)
            + " (e.g. from https://ossci-datasets.s3.amazonaws.com/mnist/, the mirror "
            "torchvision uses) into <root>/mnist/."
        ),
        hub_id="ylecun/mnist",
        read_hub=lambda hub: tuple(_hub_images(hub[s], "image", "label") for s in ("train", "test")),
    )
    (x_train, y_train), (x_val, y_val) = train, val
    x_train, x_val = (normalise_uint8(x, MNIST_MEAN, MNIST_STD) for x in (x_train, x_val))
    return make_splits("mnist", (x_train, y_train), (x_val, y_val), 10, source)


# Where Debian's dataset-fashion-mnist package puts the four gzipped IDX files.
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@register(
    "fashion-mnist", "Fashion-MNIST clothing images (IDX files; Debian's dataset-fashion-mnist): 1x28x28, 10 classes"
)
def load_fashion_mnist(data_dir=None, split_seed: int = 0, train_size: int | None = None, val_size: int | None = None):
    """Fashion-MNIST from the four IDX files (MNIST's format and names); the official test set
    is the validation split. Found after the usual roots in Debian's package folder, so
    `apt-get install dataset-fashion-mnist` is all it takes offline.

    ``train_size`` / ``val_size``: keep that many examples of the split (drawn with
    ``split_seed``, the same ones for every run seed), so that a CPU run fits; None keeps all.
    """
    (train, val), source = fetch(
        "fashion-mnist",
        data_dir,
        folders=("FashionMNIST/raw", "FashionMNIST", "fashion-mnist"),
        required=MNIST_FILES,
        read_local=_read_mnist_dir,
        how_to_get=(
            "apt-get install dataset-fashion-mnist (Debian/Ubuntu: the files land in "
            f"{DEBIAN_FASHION_MNIST}), or download the four files "
            + ", ".join(f + ".gz" for f in MNIST_FILES)
            + " from https://github.com/zalandoresearch/fashion-mnist into <root>/fashion-mnist/."
        ),
        hub_id="zalando-datasets/fashion_mnist",
        read_hub=lambda hub: tuple(_hub_images(hub[s], "image", "label") for s in ("train", "test")),
        system_dirs=(DEBIAN_FASHION_MNIST,),
    )
    (x_train, y_train), (x_val, y_val) = subset(train, train_size, split_seed), subset(val, val_size, split_seed + 1)
    x_train, x_val = (normalise_uint8(x, FASHION_MNIST_MEAN, FASHION_MNIST_STD) for x in (x_train, x_val))
    return make_splits("fashion-mnist", (x_train, y_train), (x_val, y_val), 10, source)


def subset(split: tuple[np.ndarray, np.ndarray], size: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``size`` examples of ``(images, labels)`` drawn without replacement with ``seed``, in
    their original order; the whole split when ``size`` is None or not smaller."""
    images, labels = split
    if size is None or size >= len(labels):
        return images, labels
    if size < 1:
        raise UsageError(f"a subset needs at least one example, got size {size}")
    keep = np.sort(np.random.default_rng(seed).permutation(len(labels))[:size])
    return images[keep], labels[keep]


def _read_mnist_dir(directory: Path, num_classes: int = 10):
    """The four IDX files of MNIST or Fashion-MNIST, checked: images [N, 28, 28] and labels
    [N] in 0..9 for the same N in each split; anything else is a ValueError naming the file."""
    splits = []
    for images_name, labels_name in (MNIST_FILES[:2], MNIST_FILES[2:]):
        images, labels = read_idx(directory / images_name), read_idx(directory / labels_name)
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise UsageError(
                f"{_present(directory / images_name)}: expected images [N, 28, 28], found {list(images.shape)}"
            )
        if labels.ndim != 1 or len(labels) != len(images):
            raise UsageError(
                f"{_present(directory / labels_name)}: expected {len(images)} labels (one per image), "
                f"found shape {list(labels.shape)}"
            )
        if labels.size and int(labels.max()) >= num_classes:
            raise UsageError(
                f"{_present(directory / labels_name)}: label {int(labels.max())} is not a class 0..{num_classes - 1}"
            )
        splits.append((images[:, None], labels.astype(np.int64)))  # [N, 28, 28] -> [N, 1, 28, 28]
    return tuple(splits)


def _present(path: Path) -> Path:
    """``path``, or ``path.gz`` where only the gzipped file is there."""
    return path if path.is_file() else path.with_name(path.name + ".gz")


# IDX type codes (the third byte of the magic number) -> numpy big-endian dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an unsigned-byte IDX file (``path`` or ``path.gz``) as a uint8 array of its shape.

    The magic number (two zero bytes, type 0x08, the number of dimensions) and the size the
    header announces are checked; a damaged file, gzipped or not, is a ValueError naming it.
    """
    path = _present(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            data = bytearray(file.read())  # writable, so torch can share it without a copy
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError; EOFError: cut short
        if isinstance(error, FileNotFoundError):
            raise
        raise DamagedInputError(
            f"{path}: cannot be read as {'gzip' if path.suffix == '.gz' else 'a file'} ({error})"
        ) from None
    if len(data) < 4:
        raise DamagedInputError(f"{path} is not an IDX file: {len(data)} bytes, shorter than the magic number")
    zeros, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zeros != 0 or dtype_code not in _IDX_DTYPES or ndim == 0:
        raise DamagedInputError(f"{path} is not an IDX file (magic number 0x{bytes(data[:4]).hex()})")
    if dtype_code != 0x08:
        raise DamagedInputError(f"{path}: IDX values of type 0x{dtype_code:02x}, expected unsigned bytes (0x08)")
    if len(data) < 4 + 4 * ndim:
        raise DamagedInputError(f"{path}: the IDX header is cut short ({len(data)} bytes for {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    values = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if values.size != int(np.prod(shape)):
        raise DamagedInputError(f"{path}: header says shape {list(shape)}, found {values.size} values")
    return values.reshape(shape)


# ---- CIFAR ------------------------------------------------------------------------------


@register("cifar10", "CIFAR-10 (python pickles or hub): 3x32x32, 10 classes")
def load_cifar10(data_dir=None, split_seed: int = 0):
    """CIFAR-10 from ``cifar-10-batches-py``; the official test batch is the validation split."""
    batches = [f"data_batch_{i}" for i in range(1, 6)]
    (train, val), source = fetch(
        "cifar10",
        data_dir,
        folders=("cifar-10-batches-py",),
        required=(*batches, "test_batch"),
        read_local=lambda d: (
            _concat([read_cifar_batch(d / b, b"labels") for b in batches]),
            read_cifar_batch(d / "test_batch", b"labels"),
        ),
        how_to_get=(
            "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it "
            "so that <root>/cifar-10-batches-py/data_batch_1 exists."
        ),
        hub_id="uoft-cs/cifar10",
        read_hub=lambda hub: tuple(_hub_images(hub[s], "img", "label") for s in ("train", "test")),
    )
    return _cifar_splits("cifar10", train, val, 10, CIFAR10_MEAN, CIFAR10_STD, source)


@register("cifar100", "CIFAR-100 (python pickles or hub): 3x32x32, 100 fine classes")
def load_cifar100(data_dir=None, split_seed: int = 0):
    """CIFAR-100 (fine labels) from ``cifar-100-python``; the official test set is the validation split."""
    (train, val), source = fetch(
        "cifar100",
        data_dir,
        folders=("cifar-100-python",),
        required=("train", "test"),
        read_local=lambda d: tuple(read_cifar_batch(d / s, b"fine_labels") for s in ("train", "test")),
        how_to_get=(
            "download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract it "
            "so that <root>/cifar-100-python/train exists."
        ),
        hub_id="uoft-cs/cifar100",
        read_hub=lambda hub: tuple(_hub_images(hub[s], "img", "fine_label") for s in ("train", "test")),
    )
    return _cifar_splits("cifar100", train, val, 100, CIFAR100_MEAN, CIFAR100_STD, source)


def _cifar_splits(name, train, val, num_classes, mean, std, source):
    (x_train, y_train), (x_val, y_val) = train, val
    for split, labels in (("training", y_train), ("test", y_val)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            bad = int(labels.max()) if labels.max() >= num_classes else int(labels.min())
            raise DamagedInputError(
                f"{source}: a {split} label is {bad}, not a class 0..{num_classes - 1}; download and extract "
                "the archive again"
            )
    x_train, x_val = (normalise_uint8(x, mean, std) for x in (x_train, x_val))
    return make_splits(name, (x_train, y_train), (x_val, y_val), num_classes, source)


def read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python pickle -> (uint8 images [N, 3, 32, 32], int64 labels [N]).

    A file that is not one (truncated, another pickle, a global other than numpy's array
    rebuilders) is a DamagedInputError naming it."""
    try:
        with open(path, "rb") as file:
            batch = _NumpyOnlyUnpickler(file, encoding="bytes").load()
        # Each row is 1024 red, then 1024 green, then 1024 blue values, row-major.
        images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        raise DamagedInputError(
            f"{path} is not a CIFAR python batch ({type(error).__name__}: {str(error)[:200]}); "
            "download and extract the archive again"
        ) from None
    if len(images) != len(labels):
        raise DamagedInputError(
            f"{path} holds {len(images)} images but {len(labels)} labels; download and extract the archive again"
        )
    return images, labels


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR files but refuses any global except numpy's array
    rebuilders: a plain pickle.load would run whatever code a file names."""

    _ALLOWED = {
        ("_codecs", "encode"),  # bytes, as Python 3 writes them at protocol 2
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),  # labels saved as numpy integers
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR file")
        return super().find_class(module, name)


def _concat(parts):
    images, labels = zip(*parts)
    return np.concatenate(images), np.concatenate(labels)


def _hub_images(table, image_column: str, label_column: str):
    """A hub split of PIL images -> (uint8 [N, C, H, W], int64 labels [N])."""
    images = np.stack([np.asarray(image, dtype=np.uint8) for image in table[image_column]])
    images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)  # HWC -> CHW
    return images, np.asarray(table[label_column], dtype=np.int64)
