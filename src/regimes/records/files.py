"""Writing files so that a crash never leaves half of one, and the plain-data forms JSON and TOML take.

Every file of a run or a sweep is written to a hidden temporary file in the same folder and
then moved into place with `os.replace`: a killed process leaves the old file or the new one,
never a part of one, and the dot prefix keeps a left-over temporary file out of Parquet readers.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
import uuid
from collections.abc import Mapping
from enum import Enum
from pathlib import Path

import numpy as np

from regimes.errors import DamagedInputError, RegimesError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "atomic_write",
    "json_ready",
    "toml_ready",
    "read_json",
    "write_json",
    "read_toml",
    "write_toml",
    "toml_round_trip",
    "describe_difference",
    "plain_state",
    "RunDirectoryError",
    "refuse_link",
    "real_folder",
]


class RunDirectoryError(RegimesError):
    """A run directory that cannot be used as asked (another process writes it, it cannot be
    written here, a file in it is damaged); the message says why and what to do."""


def refuse_link(path: Path) -> Path:
    """`path`, unless it is a symbolic link: regimes writes and removes no file through a link,
    so that nothing it writes leaves the folder the user named (`RunDirectoryError`)."""
    path = Path(path)
    if path.is_symlink():
        raise RunDirectoryError(
            f"{path} is a symbolic link (to {os.readlink(path)}); regimes writes nothing through a link: "
            "remove the link, or choose another --out"
        )
    return path


def real_folder(path: Path) -> Path:
    """Make the folder `path` if need be; a link there is refused (`refuse_link`)."""
    refuse_link(path).mkdir(parents=True, exist_ok=True)
    return path


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a hidden temporary file in the same folder, then rename.

    A reader (or a crash) sees the old file or the new one, never a part of one.
    """
    path = refuse_link(path)
    # Not tempfile.mkstemp: its files are private (0600); this one gets the umask's mode.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        # O_EXCL: a link planted under the temporary name is not followed either.
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno is not None and error.filename in (None, str(tmp)):
            # The message names the file the caller asked for, not our hidden temporary one.
            raise type(error)(error.errno, error.strerror, str(path)) from None
        raise


def plain_state(value):
    """`value` as `torch.load(weights_only=True)` reads it back: numpy arrays as tensors, numpy
    scalars as Python numbers, mappings as dicts (lists and tuples kept), other objects refused.
    numpy's and Python's random states come back in a form their `set_state` / `setstate` take.

    What converts a checkpoint of an older regimes (numpy and Python random states inside) once,
    for a file you trust: `python -c "import torch; from regimes.records import plain_state as p;
    torch.save(p(torch.load('RUN/checkpoint.pt', weights_only=False)), 'RUN/checkpoint.pt')"`.
    """
    import torch

    if isinstance(value, torch.Tensor) or value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, Mapping):
        return {k: plain_state(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_state(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain_state(v) for v in value)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Enum):
        return plain_state(value.value)
    raise TypeError(f"{type(value).__module__}.{type(value).__qualname__} is not plain data or a tensor")


def json_ready(value):
    """`value` as strict JSON takes it: plain containers and scalars, NaN and infinities as None,
    enumerations (a `Status`) as their value."""
    if isinstance(value, Enum):
        return json_ready(value.value)
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return [json_ready(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, value) -> None:
    """Write `value` as indented strict JSON (NaN and infinities as null), atomically."""
    text = json.dumps(json_ready(value), indent=2, allow_nan=False) + "\n"
    atomic_write(path, text.encode("utf-8"))


def read_json(path: Path):
    """The JSON at `path`; a file that is not JSON is a ValueError naming it."""
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise DamagedInputError(f"{path} is not valid JSON: {e}") from None
        except RecursionError:
            raise DamagedInputError(f"{path} is nested too deeply to be a record of regimes") from None
        except UnicodeDecodeError as e:
            raise DamagedInputError(f"{path} is not UTF-8 text: {e.reason}") from None


def toml_ready(value):
    """`value` as TOML takes it. TOML has no null: keys whose value is None are left out."""
    if isinstance(value, Enum):
        return toml_ready(value.value)
    if isinstance(value, Mapping):
        return {str(k): toml_ready(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        if any(v is None for v in value):
            raise UsageError(f"TOML cannot store None inside a list: {value!r}")
        return [toml_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return toml_ready(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def write_toml(path: Path, value: Mapping) -> None:
    import tomli_w

    atomic_write(path, tomli_w.dumps(toml_ready(value)).encode("utf-8"))


def read_toml(path: Path) -> dict:
    """The TOML at `path`; a file that is not TOML (or nests too deeply) is a ValueError naming it."""
    with open(path, "rb") as f:
        try:
            return tomllib.load(f)
        except RecursionError:
            raise DamagedInputError(f"{path} is nested too deeply to be a record of regimes") from None


def toml_round_trip(value: Mapping) -> dict:
    """`value` as it reads back from a TOML file (what a run's config comparison sees)."""
    import tomli_w

    return tomllib.loads(tomli_w.dumps(toml_ready(value)))


def parquet_bytes(table) -> bytes:
    """A pyarrow table as the bytes of a Parquet file."""
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def describe_difference(old: dict, new: dict, limit: int = 4) -> str:
    """The keys (dotted through nested tables) where two configs differ, with both values."""

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[prefix + k] = v
        return out

    def show(d, k):
        return repr(d[k]) if k in d else "unset"

    a, b = flat(old), flat(new)
    diffs = [
        f"{k}: {show(a, k)} there, {show(b, k)} now"
        for k in sorted(set(a) | set(b))
        if k not in a or k not in b or a[k] != b[k]
    ]
    more = f", and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more
