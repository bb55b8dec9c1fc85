"""Tests of the data-set registry.

Offline data sets are loaded for real. Data sets that come from outside are
read by their real loading code from tiny files that these tests write in the
published formats. No test touches the network: the hub is either blocked
(``datasets`` made unimportable) or replaced by a fake module.
"""

from __future__ import annotations

import gzip
import pickle
import re
import struct
import sys
import types

import numpy as np
import pytest
import torch

from regimes.data import DataNotFoundError, Splits, list_datasets, load_dataset
from regimes.data.images import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    MNIST_MEAN,
    MNIST_STD,
    read_cifar_batch,
    read_idx,
)
from regimes.data.tabular import ADULT_CATEGORIES, ADULT_CONTINUOUS, ADULT_FEATURES
from regimes.errors import DamagedInputError

ALL_DATASETS = [
    "adult",
    "ag_news",
    "breast-cancer",
    "cifar10",
    "cifar100",
    "digits",
    "fashion-mnist",
    "food101",
    "har",
    "jargon-file",
    "mnist",
    "mnist1d",
    "squad",
    "sst2",
    "tinyimagenet",
    "wikitext103",
    "wikitext2",
]  # the text and large image sets are tested in test_study_transformers.py
EXTERNAL_DATASETS = ["adult", "cifar10", "cifar100", "har", "mnist"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test sees the user's data, cache or the network."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REGIMES_DATA", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError


def tensors(dataset):
    inputs, labels = dataset.tensors
    return inputs, labels


def check_splits(splits, name, input_shape, num_classes, n_train=None, n_val=None):
    assert isinstance(splits, Splits)
    assert splits.name == name
    assert splits.input_shape == input_shape
    assert splits.num_classes == num_classes
    for part in (splits.train, splits.val):
        inputs, labels = tensors(part)
        assert inputs.dtype == torch.float32 and labels.dtype == torch.int64
        assert inputs.shape[1:] == input_shape
        assert len(inputs) == len(labels) > 0
        assert labels.min() >= 0 and labels.max() < num_classes
        assert torch.isfinite(inputs).all()
    if n_train is not None:
        assert len(splits.train) == n_train
    if n_val is not None:
        assert len(splits.val) == n_val


def assert_same(a, b):
    for part_a, part_b in ((a.train, b.train), (a.val, b.val)):
        for x, y in zip(part_a.tensors, part_b.tensors):
            assert torch.equal(x, y)


# ---- registry ---------------------------------------------------------------------


def test_list_datasets_names_all_sorted():
    assert list_datasets() == ALL_DATASETS


def test_unknown_name_suggests_the_nearest():
    with pytest.raises(ValueError, match="did you mean 'cifar10'"):
        load_dataset("cifar-10")


# ---- offline data sets --------------------------------------------------------------


def test_breast_cancer_holds_out_20_percent_stratified_and_standardises_with_train_stats():
    splits = load_dataset("breast-cancer")
    check_splits(splits, "breast-cancer", (30,), 2, n_train=455, n_val=114)
    x_train, y_train = tensors(splits.train)
    _, y_val = tensors(splits.val)
    assert torch.allclose(x_train.mean(0), torch.zeros(30), atol=1e-5)
    assert torch.allclose(x_train.std(0, unbiased=False), torch.ones(30), atol=1e-4)
    # 212 of 569 are malignant (label 0): stratification keeps the ratio in both splits.
    assert abs(float((y_train == 0).float().mean()) - 212 / 569) < 0.01
    assert abs(float((y_val == 0).float().mean()) - 212 / 569) < 0.01
    assert_same(splits, load_dataset("breast-cancer"))
    assert not torch.equal(y_val, tensors(load_dataset("breast-cancer", split_seed=1).val)[1])


def test_digits_is_an_mnist_shaped_upsampling_of_sklearn_digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    splits = load_dataset("digits")
    check_splits(splits, "digits", (1, 28, 28), 10, n_train=1437, n_val=360)
    assert_same(splits, load_dataset("digits"))

    # Slow, obvious reference: the same split, upsampled image by image.
    pixels, labels = load_digits(return_X_y=True)
    p_train, p_val, _, l_val = train_test_split(pixels, labels, test_size=0.2, stratify=labels, random_state=0)

    def upsample(p):
        image = torch.tensor(p, dtype=torch.float32).view(1, 1, 8, 8) / 16
        return torch.nn.functional.interpolate(image, size=(28, 28), mode="bilinear")[0]

    train_images = torch.stack([upsample(p) for p in p_train])
    mean, std = train_images.mean(), train_images.std()
    x_val, y_val = tensors(splits.val)
    assert torch.equal(y_val, torch.as_tensor(l_val))
    assert torch.allclose(x_val[7], (upsample(p_val[7]) - mean) / std, atol=1e-5)
    # Background pixels (0) are the darkest value, ink (16) the brightest.
    assert torch.isclose(x_val.min(), -mean / std, atol=1e-5)
    assert torch.isclose(x_val.max(), (1 - mean) / std, atol=1e-5)


MNIST1D_SAMPLES = 500  # the package's default is 5000 (~3 s); a tenth keeps the tests fast


@pytest.fixture(scope="module")
def mnist1d_root(tmp_path_factory):
    """Generate a small MNIST-1D once for this module, into a throwaway cache."""
    import mnist1d.data

    default_args = mnist1d.data.get_dataset_args

    def small_args(as_dict=False):
        args = default_args()
        args.num_samples = MNIST1D_SAMPLES
        return args

    root = tmp_path_factory.mktemp("mnist1d-root")
    state = np.random.get_state()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mnist1d.data, "get_dataset_args", small_args)
        np.random.seed(1234)
        before = np.random.rand()
        np.random.seed(1234)
        splits = load_dataset("mnist1d", data_dir=root)
        after = np.random.rand()
    np.random.set_state(state)
    return root, splits, before == after


def test_mnist1d_default_arguments_are_the_benchmark():
    from mnist1d.data import get_dataset_args

    args = get_dataset_args()
    assert (args.num_samples, args.train_split, args.final_seq_length) == (5000, 0.8, 40)


def test_mnist1d_uses_its_test_split_and_leaves_global_rng_alone(mnist1d_root):
    root, splits, rng_untouched = mnist1d_root
    n_val = MNIST1D_SAMPLES // 5
    check_splits(splits, "mnist1d", (40,), 10, n_train=MNIST1D_SAMPLES - n_val, n_val=n_val)
    assert rng_untouched, "make_dataset reseeds numpy's global generator; the loader must restore it"
    assert set(tensors(splits.train)[1].tolist()) == set(range(10))
    assert (root / "mnist1d" / "mnist1d-seed0.npz").is_file()


def test_mnist1d_is_read_back_from_its_cache_unchanged(mnist1d_root, monkeypatch):
    root, splits, _ = mnist1d_root
    import regimes.data.signals as signals

    def no_generation(seed):
        raise AssertionError("should have been read from the cache")

    monkeypatch.setattr(signals, "_generate", no_generation)
    assert_same(splits, load_dataset("mnist1d", data_dir=root))


# ---- Adult ------------------------------------------------------------------------

ADULT_TRAIN = """\
39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 2174, 0, 40, United-States, <=50K
50, Self-emp-not-inc, 83311, Bachelors, 13, Married-civ-spouse, Exec-managerial, Husband, White, Male, 0, 0, 13, United-States, <=50K
38, Private, 215646, HS-grad, 9, Divorced, Handlers-cleaners, Not-in-family, White, Male, 0, 0, 40, United-States, <=50K
54, ?, 180211, Some-college, 10, Married-civ-spouse, ?, Husband, Asian-Pac-Islander, Male, 0, 0, 60, South, >50K
31, Private, 45781, Masters, 14, Never-married, Prof-specialty, Not-in-family, White, Female, 14084, 0, 50, United-States, >50K
32, Private, 27882, Some-college, 10, Never-married, Machine-op-inspct, Other-relative, White, Female, 0, 2205, 40, Holand-Netherlands, <=50K

"""  # noqa: E501 (records as the UCI files have them)
ADULT_TEST = """\
|1x3 Cross validator
25, Private, 226802, 11th, 7, Never-married, Machine-op-inspct, Own-child, Black, Male, 0, 0, 40, United-States, <=50K.
44, Private, 160323, Some-college, 10, Married-civ-spouse, Machine-op-inspct, Husband, Black, Male, 7688, 0, 40, ?, >50K.
28, Local-gov, 336951, Assoc-acdm, 12, Married-civ-spouse, Protective-serv, Husband, White, Male, 0, 0, 40, United-States, >50K.
"""  # noqa: E501


def write_adult(directory, train=ADULT_TRAIN, test=ADULT_TEST):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adult.data").write_text(train)
    (directory / "adult.test").write_text(test)


def test_adult_encoding_has_the_studys_104_inputs():
    assert len(ADULT_FEATURES) == 104
    assert len(ADULT_CONTINUOUS) == 6
    assert len(ADULT_CATEGORIES["native-country"]) == 41
    assert "Holand-Netherlands" in ADULT_CATEGORIES["native-country"]
    assert "Never-worked" not in ADULT_CATEGORIES["workclass"]


def test_adult_reads_uci_files(tmp_path):
    write_adult(tmp_path / "adult")
    splits = load_dataset("adult", data_dir=tmp_path)
    # '?' rows dropped (one in each file), adult.test's junk line and blank lines skipped.
    check_splits(splits, "adult", (104,), 2, n_train=5, n_val=2)
    assert splits.source == f"local: {tmp_path / 'adult'}"
    x_train, y_train = tensors(splits.train)
    x_val, y_val = tensors(splits.val)
    assert y_train.tolist() == [0, 0, 0, 1, 0]
    assert y_val.tolist() == [0, 1]  # the trailing '.' of adult.test's labels is dropped

    one_hot = x_train[:, 6:]
    assert torch.equal(one_hot.sum(1), torch.full((5,), 8.0))  # one category per column
    assert set(one_hot.unique().tolist()) == {0.0, 1.0}
    dutch = ADULT_FEATURES.index("native-country=Holand-Netherlands")
    assert dutch == 103 and x_train[4, dutch] == 1 and x_train[:4, dutch].sum() == 0
    assert x_val[1, ADULT_FEATURES.index("occupation=Protective-serv")] == 1
    assert x_val[1, ADULT_FEATURES.index("workclass=Local-gov")] == 1

    # Continuous columns standardised with the training rows' statistics.
    ages = np.array([39, 50, 38, 31, 32.0])
    assert torch.allclose(x_train[:, 0], torch.tensor((ages - ages.mean()) / ages.std()).float(), atol=1e-5)
    assert torch.isclose(x_val[0, 0], torch.tensor((25 - ages.mean()) / ages.std()).float(), atol=1e-5)


def test_adult_rejects_an_unknown_category(tmp_path):
    write_adult(tmp_path / "adult", train=ADULT_TRAIN.replace("State-gov", "Moon-gov"))
    with pytest.raises(ValueError, match="Moon-gov"):
        load_dataset("adult", data_dir=tmp_path)


# ---- HAR --------------------------------------------------------------------------


def write_har(root, n_train=4, n_test=3):
    rng = np.random.default_rng(0)
    data = {}
    for part, n in (("train", n_train), ("test", n_test)):
        (root / part).mkdir(parents=True)
        x = rng.uniform(-1, 1, size=(n, 561)).round(7)
        y = np.arange(n) % 6 + 1
        # The published files: right-aligned scientific notation, one row per line.
        np.savetxt(root / part / f"X_{part}.txt", x, fmt="%15.7e", delimiter=" ")
        np.savetxt(root / part / f"y_{part}.txt", y, fmt="%d")
        data[part] = x, y
    return data


def test_har_reads_the_published_directory(tmp_path):
    written = write_har(tmp_path / "UCI HAR Dataset")
    splits = load_dataset("har", data_dir=tmp_path)
    check_splits(splits, "har", (561,), 6, n_train=4, n_val=3)
    x_val, y_val = tensors(splits.val)
    assert y_val.tolist() == [0, 1, 2]  # labels 1..6 become 0..5
    assert x_val[2, 560] == pytest.approx(written["test"][0][2, 560], abs=1e-6)
    assert tensors(splits.train)[0][1, 17] == pytest.approx(written["train"][0][1, 17], abs=1e-6)


def test_har_rejects_the_wrong_number_of_features(tmp_path):
    root = tmp_path / "har"
    write_har(root)
    np.savetxt(root / "train" / "X_train.txt", np.zeros((4, 560)))
    with pytest.raises(ValueError, match="561"):
        load_dataset("har", data_dir=tmp_path)


# ---- MNIST ------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(directory, n_train=5, n_test=3, gzipped=("train",)):
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) + 7) % 10,
    }
    for name, array in arrays.items():
        if name.startswith(gzipped):
            (directory / (name + ".gz")).write_bytes(gzip.compress(idx_bytes(array)))
        else:
            (directory / name).write_bytes(idx_bytes(array))
    return arrays


@pytest.mark.parametrize("layout", ["mnist", "MNIST/raw"])
def test_mnist_reads_idx_files_gzipped_or_not(tmp_path, monkeypatch, layout):
    arrays = write_mnist(tmp_path / layout)
    monkeypatch.setenv("REGIMES_DATA", str(tmp_path))  # found through the environment variable
    splits = load_dataset("mnist")
    check_splits(splits, "mnist", (1, 28, 28), 10, n_train=5, n_val=3)
    x_train, y_train = tensors(splits.train)
    x_val, y_val = tensors(splits.val)
    assert y_train.tolist() == [0, 1, 2, 3, 4]
    assert y_val.tolist() == [7, 8, 9]
    pixel = arrays["t10k-images-idx3-ubyte"][2, 5, 9]
    assert x_val[2, 0, 5, 9] == pytest.approx((pixel / 255 - MNIST_MEAN[0]) / MNIST_STD[0], abs=1e-5)
    pixel = arrays["train-images-idx3-ubyte"][4, 27, 0]
    assert x_train[4, 0, 27, 0] == pytest.approx((pixel / 255 - MNIST_MEAN[0]) / MNIST_STD[0], abs=1e-5)


def test_fashion_mnist_reads_the_debian_package_folder_after_the_usual_roots(tmp_path, monkeypatch):
    """The same IDX reader; found in the system folder (Debian's) when no root has it, and a
    root wins over the system folder. Fixtures in the package's layout (all four gzipped)."""
    from regimes.data import images

    system = tmp_path / "usr-share-datasets-fashion-mnist"
    arrays = write_mnist(system, gzipped=("train", "t10k"))
    monkeypatch.setattr(images, "DEBIAN_FASHION_MNIST", str(system))
    monkeypatch.setenv("REGIMES_DATA", str(tmp_path / "empty"))
    splits = load_dataset("fashion-mnist")
    check_splits(splits, "fashion-mnist", (1, 28, 28), 10, n_train=5, n_val=3)
    assert splits.source == f"local: {system}"
    x_val, y_val = tensors(splits.val)
    assert y_val.tolist() == [7, 8, 9]
    pixel = arrays["t10k-images-idx3-ubyte"][1, 3, 4]
    mean, std = images.FASHION_MNIST_MEAN[0], images.FASHION_MNIST_STD[0]
    assert x_val[1, 0, 3, 4] == pytest.approx((pixel / 255 - mean) / std, abs=1e-5)

    write_mnist(tmp_path / "mine" / "fashion-mnist", n_train=7)
    splits = load_dataset("fashion-mnist", data_dir=tmp_path / "mine")
    assert len(splits.train) == 7 and "mine" in splits.source


def test_fashion_mnist_missing_says_how_to_install_it(tmp_path, monkeypatch):
    from regimes.data import images

    monkeypatch.setattr(images, "DEBIAN_FASHION_MNIST", str(tmp_path / "absent"))
    monkeypatch.setenv("REGIMES_DATA", str(tmp_path))
    monkeypatch.setitem(sys.modules, "datasets", None)  # no hub
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


def test_read_idx_rejects_a_truncated_file(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(idx_bytes(np.arange(10))[:-1])
    with pytest.raises(ValueError, match="header says shape"):
        read_idx(path)


def _system_fashion_mnist(tmp_path, monkeypatch, **kwargs):
    """Fixtures in the Debian package's folder (all four gzipped); returns (folder, arrays)."""
    from regimes.data import images

    system = tmp_path / "system"
    arrays = write_mnist(system, gzipped=("train", "t10k"), **kwargs)
    monkeypatch.setattr(images, "DEBIAN_FASHION_MNIST", str(system))
    return system, arrays


def test_fashion_mnist_subset_is_drawn_once_with_the_split_seed(tmp_path, monkeypatch):
    _system, arrays = _system_fashion_mnist(tmp_path, monkeypatch, n_train=20, n_test=12)
    splits = load_dataset("fashion-mnist", train_size=6, val_size=4)
    check_splits(splits, "fashion-mnist", (1, 28, 28), 10, n_train=6, n_val=4)
    again = load_dataset("fashion-mnist", train_size=6, val_size=4)
    assert torch.equal(splits.train.tensors[0], again.train.tensors[0])
    # Each kept image keeps its own label, in the file's order.
    x_train, y_train = tensors(splits.train)
    full_x, full_y = tensors(load_dataset("fashion-mnist").train)
    rows = [next(i for i in range(20) if torch.equal(full_x[i], x)) for x in x_train]
    assert rows == sorted(rows) and len(set(rows)) == 6
    assert y_train.tolist() == [int(full_y[i]) for i in rows]
    other = load_dataset("fashion-mnist", split_seed=1, train_size=6)
    assert not torch.equal(other.train.tensors[0], x_train)
    assert len(load_dataset("fashion-mnist", train_size=1000).train) == 20  # more than there is: all


def test_fashion_mnist_subset_of_nothing_is_refused(tmp_path, monkeypatch):
    _system_fashion_mnist(tmp_path, monkeypatch)
    with pytest.raises(ValueError, match="at least one example"):
        load_dataset("fashion-mnist", train_size=0)


def _damage(path, how: str) -> None:
    data = gzip.decompress(path.read_bytes())
    if how == "not gzip":
        path.write_bytes(b"this is not gzip at all")
    elif how == "cut gzip":
        path.write_bytes(gzip.compress(data)[:-30])
    elif how == "magic":
        path.write_bytes(gzip.compress(b"\x00\x00\x0b\x01" + data[4:]))
    elif how == "header":
        path.write_bytes(gzip.compress(data[:6]))


@pytest.mark.parametrize(
    "how, message",
    [
        ("not gzip", "cannot be read as gzip"),
        ("cut gzip", "cannot be read as gzip"),
        ("magic", "expected unsigned bytes"),
        ("header", "header is cut short"),
    ],
)
def test_a_damaged_idx_file_is_a_one_line_value_error_naming_it(tmp_path, monkeypatch, how, message):
    system, _arrays = _system_fashion_mnist(tmp_path, monkeypatch)
    damaged = system / "t10k-labels-idx1-ubyte.gz"
    _damage(damaged, how)
    with pytest.raises(ValueError, match=message) as caught:
        load_dataset("fashion-mnist")
    assert str(damaged) in str(caught.value) and "\n" not in str(caught.value)


def test_idx_magic_must_start_with_two_zero_bytes(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(b"\x01\x00\x08\x01" + struct.pack(">I", 2) + b"\x00\x01")
    with pytest.raises(ValueError, match="is not an IDX file"):
        read_idx(path)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="shorter than the magic number"):
        read_idx(path)


def test_labels_outside_the_ten_classes_are_refused_naming_the_file(tmp_path, monkeypatch):
    system, _arrays = _system_fashion_mnist(tmp_path, monkeypatch)
    (system / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.array([0, 1, 2, 3, 10]))))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz: label 10 is not a class 0..9"):
        load_dataset("fashion-mnist")


def test_labels_and_images_must_agree_in_number(tmp_path, monkeypatch):
    system, _arrays = _system_fashion_mnist(tmp_path, monkeypatch)
    (system / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.array([1, 2]))))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz: expected 3 labels"):
        load_dataset("fashion-mnist")


def test_images_must_be_28x28(tmp_path, monkeypatch):
    system, _arrays = _system_fashion_mnist(tmp_path, monkeypatch)
    (system / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((3, 28, 27)))))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz: expected images \[N, 28, 28\]"):
        load_dataset("fashion-mnist")


# ---- The Jargon File (Debian's jargon-text) ------------------------------------------------


def _write_jargon(directory, paragraphs: int = 200, gzipped: bool = True):
    """A small text in the Jargon File's layout: indented paragraphs between blank lines."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = "the hacker wrote a kludge in the core and the bug went away for good".split()
    parts = [
        f"   :term{i}: n.\n\n   " + "\n   ".join(" ".join(rng.choice(words, 8)) for _ in range(3))
        for i in range(paragraphs)
    ]
    text = "                                The Jargon File\n\n" + "\n\n".join(parts) + "\n"
    if gzipped:
        (directory / "jargon.txt.gz").write_bytes(gzip.compress(text.encode()))
    else:
        (directory / "jargon.txt").write_text(text)
    return text


def _system_jargon(tmp_path, monkeypatch, **kwargs):
    from regimes.data import text

    system = tmp_path / "usr-share-doc-jargon-text"
    _write_jargon(system, **kwargs)
    monkeypatch.setattr(text, "DEBIAN_JARGON", str(system))
    return system


def test_jargon_file_reads_the_debian_package_folder_as_blocks_of_tokens(tmp_path, monkeypatch):
    pytest.importorskip("tokenizers")
    system = _system_jargon(tmp_path, monkeypatch)
    splits = load_dataset("jargon-file", vocab_size=300, max_length=16)
    assert splits.source == f"local: {system}"
    (train,), (val,) = splits.train.tensors, splits.val.tensors
    assert train.shape[1:] == val.shape[1:] == (16,) and train.dtype == torch.int64
    assert splits.input_shape == (16,) and splits.num_classes == splits.vocab_size <= 300
    assert 0 < len(val) < len(train) / 4  # about a tenth of the paragraphs
    assert int(train.max()) < splits.vocab_size and (train == 2).any()  # </s> closes each paragraph
    again = load_dataset("jargon-file", vocab_size=300, max_length=16)
    assert torch.equal(again.train.tensors[0], train)
    small = load_dataset("jargon-file", vocab_size=300, max_length=16, train_chars=2000, val_chars=500)
    assert len(small.train) < len(train) / 3 and len(small.val) <= len(val)


def test_jargon_file_paragraphs_are_one_line_each(tmp_path):
    from regimes.data.text import read_paragraphs

    text = _write_jargon(tmp_path, paragraphs=3, gzipped=False)
    paragraphs = read_paragraphs(tmp_path / "jargon.txt")
    assert paragraphs[0] == "The Jargon File" and paragraphs[1] == ":term0: n."
    assert len(paragraphs) == 7 and all("\n" not in p and "  " not in p for p in paragraphs)
    assert " ".join(paragraphs) == " ".join(text.split())


def test_jargon_file_missing_says_how_to_install_it(tmp_path, monkeypatch):
    from regimes.data import text

    monkeypatch.setattr(text, "DEBIAN_JARGON", str(tmp_path / "absent"))
    with pytest.raises(DataNotFoundError, match="apt-get install jargon-text"):
        load_dataset("jargon-file")


def test_a_damaged_jargon_file_is_a_value_error_naming_it(tmp_path, monkeypatch):
    system = _system_jargon(tmp_path, monkeypatch)
    (system / "jargon.txt.gz").write_bytes(gzip.compress(b"text")[:-6])
    with pytest.raises(ValueError, match="jargon.txt.gz: not readable"):
        load_dataset("jargon-file")
    (system / "jargon.txt.gz").write_bytes(gzip.compress(b"\xff\xfe not utf-8"))
    with pytest.raises(ValueError, match="jargon.txt.gz: not readable as UTF-8"):
        load_dataset("jargon-file")


# ---- CIFAR ------------------------------------------------------------------------


def write_cifar_pickle(path, images, labels, label_key):
    """A batch as the CIFAR python version stores it: a dict with bytes keys."""
    batch = {b"batch_label": b"test", b"data": images.reshape(len(images), 3072), label_key: list(labels)}
    with open(path, "wb") as file:
        pickle.dump(batch, file, protocol=2)


def test_cifar10_reads_the_python_batches(tmp_path):
    directory = tmp_path / "cifar-10-batches-py"
    directory.mkdir()
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8) for _ in range(6)]
    for i, images in enumerate(batches[:5], start=1):
        write_cifar_pickle(directory / f"data_batch_{i}", images, [i, i + 1], b"labels")
    write_cifar_pickle(directory / "test_batch", batches[5], [9, 0], b"labels")

    splits = load_dataset("cifar10", data_dir=tmp_path)
    check_splits(splits, "cifar10", (3, 32, 32), 10, n_train=10, n_val=2)
    x_train, y_train = tensors(splits.train)
    x_val, y_val = tensors(splits.val)
    assert y_train.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6]  # batches in order 1..5
    assert y_val.tolist() == [9, 0]
    # Channel-major rows: index 1024 + 5 * 32 + 7 is green, row 5, column 7.
    green = batches[2].reshape(2, 3072)[1, 1024 + 5 * 32 + 7]
    expected = (green / 255 - CIFAR10_MEAN[1]) / CIFAR10_STD[1]
    assert x_train[5, 1, 5, 7] == pytest.approx(expected, abs=1e-5)
    blue = batches[5][0, 2, 31, 0]
    assert x_val[0, 2, 31, 0] == pytest.approx((blue / 255 - CIFAR10_MEAN[2]) / CIFAR10_STD[2], abs=1e-5)


def test_cifar100_uses_the_fine_labels(tmp_path):
    directory = tmp_path / "cifar100" / "cifar-100-python"
    directory.mkdir(parents=True)
    images = np.full((3, 3, 32, 32), 255, dtype=np.uint8)
    for split, fine in (("train", [99, 42, 3]), ("test", [7, 8, 9])):
        batch = {b"data": images.reshape(3, 3072), b"fine_labels": fine, b"coarse_labels": [1, 2, 3]}
        with open(directory / split, "wb") as file:
            pickle.dump(batch, file, protocol=2)

    splits = load_dataset("cifar100", data_dir=tmp_path)
    check_splits(splits, "cifar100", (3, 32, 32), 100, n_train=3, n_val=3)
    assert tensors(splits.train)[1].tolist() == [99, 42, 3]
    assert tensors(splits.val)[1].tolist() == [7, 8, 9]
    white = (1 - torch.tensor(CIFAR100_MEAN)) / torch.tensor(CIFAR100_STD)
    assert torch.allclose(tensors(splits.val)[0][1, :, 4, 4], white)


class _RunsCode:
    def __reduce__(self):
        import os

        return os.getcwd, ()


def test_cifar_pickles_may_not_run_code(tmp_path):
    path = tmp_path / "data_batch_1"
    with open(path, "wb") as file:
        pickle.dump({b"data": _RunsCode(), b"labels": [0]}, file, protocol=2)
    with pytest.raises(DamagedInputError, match="refusing to load posix.getcwd"):
        read_cifar_batch(path, b"labels")


def _cifar10_folder(tmp_path, damage):
    """A CIFAR-10 folder of two-image batches, data_batch_3 damaged as `damage` says."""
    directory = tmp_path / "cifar-10-batches-py"
    directory.mkdir()
    images = np.zeros((2, 3, 32, 32), dtype=np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_pickle(directory / name, images, [1, 2], b"labels")
    damaged = directory / "data_batch_3"
    if damage == "truncated":
        damaged.write_bytes(damaged.read_bytes()[:100])
    elif damage == "not a pickle":
        damaged.write_bytes(b"<html>404 Not Found</html>")
    elif damage == "no labels":
        write_cifar_pickle(damaged, images, [1, 2], b"fine_labels")
    elif damage == "fewer labels":
        write_cifar_pickle(damaged, images, [1], b"labels")
    elif damage == "image of another size":
        with open(damaged, "wb") as file:
            pickle.dump({b"data": np.zeros((2, 1000), dtype=np.uint8), b"labels": [1, 2]}, file, protocol=2)
    elif damage == "label out of range":
        write_cifar_pickle(damaged, images, [1, 10], b"labels")
    return directory


@pytest.mark.parametrize(
    "damage, says",
    [
        ("truncated", "data_batch_3 is not a CIFAR python batch"),
        ("not a pickle", "data_batch_3 is not a CIFAR python batch"),
        ("no labels", "data_batch_3 is not a CIFAR python batch (KeyError"),
        ("fewer labels", "data_batch_3 holds 2 images but 1 labels"),
        ("image of another size", "data_batch_3 is not a CIFAR python batch (ValueError"),
        ("label out of range", "a training label is 10, not a class 0..9"),
    ],
)
def test_a_damaged_cifar_file_is_named_in_one_error(tmp_path, damage, says):
    _cifar10_folder(tmp_path, damage)
    with pytest.raises(DamagedInputError, match=re.escape(says)):
        load_dataset("cifar10", data_dir=tmp_path)


def test_a_damaged_cifar_file_is_one_line_on_the_command_line(tmp_path, capsys, monkeypatch):
    from regimes.cli import main

    (tmp_path / "data").mkdir()
    _cifar10_folder(tmp_path / "data", "truncated")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "lenet5-cifar10", "--data-dir", str(tmp_path / "data"), "--out", "run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("regimes: error: ") and "data_batch_3 is not a CIFAR python batch" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "run").exists()


# ---- missing data and the hub -----------------------------------------------------------


@pytest.mark.parametrize("name", EXTERNAL_DATASETS)
def test_missing_data_names_every_place_searched(tmp_path, monkeypatch, name):
    given, env = tmp_path / "given", tmp_path / "env"
    monkeypatch.setenv("REGIMES_DATA", str(env))
    (given / name).mkdir(parents=True)  # present but empty
    with pytest.raises(DataNotFoundError) as caught:
        load_dataset(name, data_dir=given)
    message = str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)
    assert repr(name) in message
    for root in (given, env, tmp_path / "home" / ".cache" / "regimes"):
        assert f"  {root / name}" in message
    assert f"{given / name}  (exists, but files are missing)" in message
    assert "https://" in message.split("To get it: download")[1]
    assert "REGIMES_DATA" in message
    if name != "har":
        assert "needs datasets, which is not installed: pip install -e '.[hub]' (in the regimes checkout)" in message


def test_missing_data_lists_the_published_folder_names(tmp_path):
    with pytest.raises(DataNotFoundError) as caught:
        load_dataset("cifar10", data_dir=tmp_path)
    assert str(tmp_path / "cifar-10-batches-py") in str(caught.value)
    assert str(tmp_path / "cifar10" / "cifar-10-batches-py") in str(caught.value)


def fake_datasets_module(load):
    module = types.ModuleType("datasets")
    module.load_dataset = load
    return module


def fake_hub(monkeypatch, load):
    """A `datasets` whose load_dataset is `load`, behind a hub that answers (there may be no network here)."""
    from regimes.data import sources

    monkeypatch.setitem(sys.modules, "datasets", fake_datasets_module(load))
    monkeypatch.setattr(sources, "hub_unreachable", lambda: None)


def test_a_failing_hub_falls_through_to_data_not_found(tmp_path, monkeypatch):
    def offline(hub_id):
        raise ConnectionError("no network")

    fake_hub(monkeypatch, offline)
    with pytest.raises(DataNotFoundError, match=r"'uoft-cs/cifar100' failed: ConnectionError: no network"):
        load_dataset("cifar100", data_dir=tmp_path)


def test_mnist_from_a_fake_hub(tmp_path, monkeypatch):
    from PIL import Image

    asked = []

    def load(hub_id):
        asked.append(hub_id)
        split = lambda n: {  # noqa: E731
            "image": [Image.fromarray(np.full((28, 28), 10 * i, dtype=np.uint8)) for i in range(n)],
            "label": list(range(n)),
        }
        return {"train": split(4), "test": split(2)}

    fake_hub(monkeypatch, load)
    splits = load_dataset("mnist", data_dir=tmp_path)
    assert asked == ["ylecun/mnist"]
    assert splits.source == "hub: ylecun/mnist"
    check_splits(splits, "mnist", (1, 28, 28), 10, n_train=4, n_val=2)
    assert tensors(splits.train)[0][3, 0, 0, 0] == pytest.approx((30 / 255 - MNIST_MEAN[0]) / MNIST_STD[0], abs=1e-5)


def test_cifar10_from_a_fake_hub(tmp_path, monkeypatch):
    from PIL import Image

    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[1, 2, 0] = 255  # red at row 1, column 2

    def load(hub_id):
        split = {"img": [Image.fromarray(image)] * 2, "label": [3, 4]}
        return {"train": split, "test": split}

    fake_hub(monkeypatch, load)
    splits = load_dataset("cifar10", data_dir=tmp_path)
    check_splits(splits, "cifar10", (3, 32, 32), 10, n_train=2, n_val=2)
    x_val = tensors(splits.val)[0]
    assert x_val[0, 0, 1, 2] == pytest.approx((1 - CIFAR10_MEAN[0]) / CIFAR10_STD[0], abs=1e-5)
    assert x_val[0, 0, 2, 1] == pytest.approx(-CIFAR10_MEAN[0] / CIFAR10_STD[0], abs=1e-5)


class _FakeTable(dict):
    @property
    def column_names(self):
        return list(self)


def test_adult_from_a_fake_hub_holds_out_20_percent(tmp_path, monkeypatch):
    names = [
        "age",
        "workclass",
        "fnlwgt",
        "education",
        "education.num",
        "marital.status",
        "occupation",
        "relationship",
        "race",
        "sex",
        "capital.gain",
        "capital.loss",
        "hours.per.week",
        "native.country",
        "income",
    ]
    rows = [line.split(", ") for line in ADULT_TRAIN.strip().splitlines()] * 4  # 24 rows, 4 with '?'
    table = _FakeTable({n: [int(v) if v.isdigit() else v for v in column] for n, column in zip(names, zip(*rows))})
    fake_hub(monkeypatch, lambda hub_id: {"train": table})

    splits = load_dataset("adult", data_dir=tmp_path)
    assert splits.source == "hub: scikit-learn/adult-census-income"
    check_splits(splits, "adult", (104,), 2, n_train=16, n_val=4)
    assert tensors(splits.train)[1].sum() + tensors(splits.val)[1].sum() == 4  # the '>50K' rows
    assert_same(splits, load_dataset("adult", data_dir=tmp_path))
