"""Tabular data sets: Breast Cancer (offline), Adult (files or hub) and HAR (files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from regimes.data.registry import holdout, make_splits, register, standardise
from regimes.data.sources import fetch
from regimes.errors import DamagedInputError, UsageError
from regimes.extras import require

# ---- Breast Cancer --------------------------------------------------------------


@register("breast-cancer", "Wisconsin breast cancer (scikit-learn, offline): 30 features, 2 classes")
def load_breast_cancer(data_dir=None, split_seed: int = 0):
    """scikit-learn's copy of the study's Breast Cancer data: 20% held out, standardised."""
    sklearn_datasets = require("sklearn.datasets", "the breast-cancer data set")
    inputs, labels = sklearn_datasets.load_breast_cancer(return_X_y=True)
    (x_train, y_train), (x_val, y_val) = holdout(inputs, labels, split_seed)
    x_train, x_val = standardise(x_train, x_val)
    return make_splits("breast-cancer", (x_train, y_train), (x_val, y_val), 2, "scikit-learn")


# ---- Adult ----------------------------------------------------------------------

ADULT_COLUMNS = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
    "income",
)
ADULT_CONTINUOUS = ("age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week")
# Category lists from the UCI adult.names, fixed here so that train and test get
# the same columns whatever values each file happens to contain. 'Never-worked'
# is left out of workclass: every such row has occupation '?' and is dropped,
# so it would only add a column of zeros. That gives 6 + 98 = 104 inputs, the
# study's count (and that of one-hot encoding the cleaned adult.data).
ADULT_CATEGORIES = {
    "workclass": (
        "Private",
        "Self-emp-not-inc",
        "Self-emp-inc",
        "Federal-gov",
        "Local-gov",
        "State-gov",
        "Without-pay",
    ),
    "education": (
        "Bachelors",
        "Some-college",
        "11th",
        "HS-grad",
        "Prof-school",
        "Assoc-acdm",
        "Assoc-voc",
        "9th",
        "7th-8th",
        "12th",
        "Masters",
        "1st-4th",
        "10th",
        "Doctorate",
        "5th-6th",
        "Preschool",
    ),
    "marital-status": (
        "Married-civ-spouse",
        "Divorced",
        "Never-married",
        "Separated",
        "Widowed",
        "Married-spouse-absent",
        "Married-AF-spouse",
    ),
    "occupation": (
        "Tech-support",
        "Craft-repair",
        "Other-service",
        "Sales",
        "Exec-managerial",
        "Prof-specialty",
        "Handlers-cleaners",
        "Machine-op-inspct",
        "Adm-clerical",
        "Farming-fishing",
        "Transport-moving",
        "Priv-house-serv",
        "Protective-serv",
        "Armed-Forces",
    ),
    "relationship": ("Wife", "Own-child", "Husband", "Not-in-family", "Other-relative", "Unmarried"),
    "race": ("White", "Asian-Pac-Islander", "Amer-Indian-Eskimo", "Other", "Black"),
    "sex": ("Female", "Male"),
    "native-country": (
        "United-States",
        "Cambodia",
        "England",
        "Puerto-Rico",
        "Canada",
        "Germany",
        "Outlying-US(Guam-USVI-etc)",
        "India",
        "Japan",
        "Greece",
        "South",
        "China",
        "Cuba",
        "Iran",
        "Honduras",
        "Philippines",
        "Italy",
        "Poland",
        "Jamaica",
        "Vietnam",
        "Mexico",
        "Portugal",
        "Ireland",
        "France",
        "Dominican-Republic",
        "Laos",
        "Ecuador",
        "Taiwan",
        "Haiti",
        "Columbia",
        "Hungary",
        "Guatemala",
        "Nicaragua",
        "Scotland",
        "Thailand",
        "Yugoslavia",
        "El-Salvador",
        "Trinadad&Tobago",
        "Peru",
        "Hong",
        "Holand-Netherlands",
    ),
}
ADULT_FEATURES = ADULT_CONTINUOUS + tuple(
    f"{column}={value}" for column, values in ADULT_CATEGORIES.items() for value in values
)
assert len(ADULT_FEATURES) == 104, "the study's Adult MLP has 104 inputs"

ADULT_HOW_TO_GET = (
    "download adult.data and adult.test from https://archive.ics.uci.edu/dataset/2/adult "
    "(https://archive.ics.uci.edu/static/public/2/adult.zip) into <root>/adult/."
)


@register("adult", "UCI Adult census income (files or hub): 104 one-hot inputs, 2 classes")
def load_adult(data_dir=None, split_seed: int = 0):
    """UCI Adult: rows with '?' dropped, 6 standardised continuous + 98 one-hot inputs.

    adult.test is the validation split. From the hub (only adult.data's rows
    are there) 20% is held out with ``split_seed`` instead.
    """
    (train_rows, val_rows), source = fetch(
        "adult",
        data_dir,
        folders=("adult", "census+income"),
        required=("adult.data", "adult.test"),
        read_local=lambda d: (read_adult_file(d / "adult.data"), read_adult_file(d / "adult.test")),
        how_to_get=ADULT_HOW_TO_GET,
        hub_id="scikit-learn/adult-census-income",
        read_hub=lambda hub: _adult_rows_from_hub(hub, split_seed),
    )
    x_train, y_train = encode_adult(train_rows)
    x_val, y_val = encode_adult(val_rows)
    n = len(ADULT_CONTINUOUS)
    x_train[:, :n], x_val[:, :n] = standardise(x_train[:, :n], x_val[:, :n])
    return make_splits("adult", (x_train, y_train), (x_val, y_val), 2, source)


def read_adult_file(path: Path) -> list[list[str]]:
    """Rows of stripped fields from adult.data / adult.test, rows with '?' dropped.

    Skips blank lines and adult.test's '|1x3 Cross validator' first line, and
    drops the trailing '.' of adult.test's labels.
    """
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("|"):
            continue
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != len(ADULT_COLUMNS):
            raise DamagedInputError(f"{path}:{number}: expected {len(ADULT_COLUMNS)} fields, got {len(fields)}")
        if "?" in fields:
            continue
        fields[-1] = fields[-1].rstrip(".")
        rows.append(fields)
    return rows


def encode_adult(rows: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Raw rows in ``ADULT_COLUMNS`` order -> inputs [N, 104] (``ADULT_FEATURES``), labels [N]."""
    inputs = np.zeros((len(rows), len(ADULT_FEATURES)))
    position = {column: i for i, column in enumerate(ADULT_COLUMNS)}
    for j, column in enumerate(ADULT_CONTINUOUS):
        inputs[:, j] = [float(row[position[column]]) for row in rows]
    offset = len(ADULT_CONTINUOUS)
    for column, values in ADULT_CATEGORIES.items():
        index = {value: i for i, value in enumerate(values)}
        for r, row in enumerate(rows):
            value = row[position[column]]
            if value not in index:
                raise DamagedInputError(f"Adult: unknown {column} {value!r}; known: {', '.join(values)}")
            inputs[r, offset + index[value]] = 1.0
        offset += len(values)
    labels = np.array([_adult_label(row[-1]) for row in rows], dtype=np.int64)
    return inputs, labels


def _adult_label(income: str) -> int:
    if income not in ("<=50K", ">50K"):
        raise DamagedInputError(f"Adult: unknown income label {income!r}")
    return int(income == ">50K")


def _adult_rows_from_hub(hub, split_seed: int):
    """The hub copy (columns 'education.num' etc., one 'train' split) as raw rows, 20% held out."""
    table = hub["train"]
    by_name = {name.replace(".", "-").replace("_", "-"): name for name in table.column_names}
    columns = [["?" if v is None else str(v).strip() for v in table[by_name[c]]] for c in ADULT_COLUMNS]
    rows = [list(row) for row in zip(*columns) if "?" not in row]
    for row in rows:
        row[-1] = row[-1].rstrip(".")
    labels = np.array([row[-1] for row in rows])
    (train, _), (val, _) = holdout(np.array(rows, dtype=object), labels, split_seed)
    return [list(r) for r in train], [list(r) for r in val]


# ---- HAR ------------------------------------------------------------------------

HAR_FEATURES = 561
HAR_FILES = ("train/X_train.txt", "train/y_train.txt", "test/X_test.txt", "test/y_test.txt")


@register("har", "UCI Human Activity Recognition (files): 561 features, 6 classes")
def load_har(data_dir=None, split_seed: int = 0):
    """UCI HAR: the published 561 features as they are (already scaled to [-1, 1]).

    The official test subjects are the validation split; labels 1..6 become 0..5.
    Only a local copy of the published files is used (no hub id).
    """
    (train, val), source = fetch(
        "har",
        data_dir,
        folders=("UCI HAR Dataset",),
        required=HAR_FILES,
        read_local=lambda d: (_read_har(d, "train"), _read_har(d, "test")),
        how_to_get=(
            "download https://archive.ics.uci.edu/static/public/240/"
            "human+activity+recognition+using+smartphones.zip, unzip it and the "
            "'UCI HAR Dataset.zip' inside, so that <root>/UCI HAR Dataset/train/X_train.txt exists."
        ),
    )
    return make_splits("har", train, val, 6, source)


def _read_har(directory: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    inputs = np.loadtxt(directory / part / f"X_{part}.txt", dtype=np.float32, ndmin=2)
    labels = np.loadtxt(directory / part / f"y_{part}.txt", dtype=np.int64, ndmin=1) - 1
    if inputs.shape[1] != HAR_FEATURES or len(inputs) != len(labels):
        raise UsageError(
            f"HAR {part}: expected [N, {HAR_FEATURES}] inputs and N labels, got {inputs.shape} and {labels.shape}"
        )
    return inputs, labels
