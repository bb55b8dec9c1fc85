"""The run directory: everything one training run leaves behind, readable by pandas or polars.

```
RUN/
  config.toml       the resolved config
  steps/            per-iteration records, one Parquet file per chunk (part-00001.parquet, ...):
                    iteration, epoch (int64), dw, da and one "da:<site>" column per site (float64)
  epochs.parquet    per-epoch scores, rewritten whole each epoch
  summary.json      the run's numbers, status and software versions
  figure.png        the run's figure (regimes.plots.save_run_figure)
  checkpoint.pt     written by the runner itself
```

`pd.read_parquet("RUN/steps")` and `pl.read_parquet("RUN/steps/*.parquet")` open the records.
Every file is written to a hidden temporary file in the same folder and then moved into
place with `os.replace`, so a killed process leaves either the old file or the new one,
never half of one; the dot prefix keeps a left-over temporary file out of Parquet readers.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import sys
import uuid
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "RunDirectory", "is_run_directory", "software_versions", "atomic_write", "json_ready",
    "describe_difference", "STATUSES",
]  # fmt: skip

STATUSES = ("running", "finished", "diverged", "interrupted")

_INT_COLUMNS = ("iteration", "epoch")
_STEP_REQUIRED = ("iteration", "epoch", "dw", "da")
_EPOCH_COLUMNS = {
    "epoch": pa.int64(),
    "train_loss": pa.float64(),
    "train_score": pa.float64(),
    "val_loss": pa.float64(),
    "val_score": pa.float64(),
    "seconds": pa.float64(),
}
_CHUNK = re.compile(r"^part-(\d+)\.parquet$")
# Files a run owns; create(force=True) removes these and nothing else the user put there.
_RUN_FILES = ("config.toml", "epochs.parquet", "summary.json", "figure.png", "checkpoint.pt")


class RunDirectory:
    """One run's folder. Stores its path only; every method reads or writes the disk."""

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    # -- paths ---------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    @property
    def steps_dir(self) -> Path:
        return self.path / "steps"

    @property
    def epochs_path(self) -> Path:
        return self.path / "epochs.parquet"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def figure_path(self) -> Path:
        return self.path / "figure.png"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    # -- lifecycle -----------------------------------------------------------------------

    def create(self, config: dict, force: bool = False) -> None:
        """Make the folder and write `config`.

        A folder that already holds a run with a different config is refused
        (FileExistsError) unless `force`, which removes that run's files first. A run with
        the same config is left as it is: the caller resumes it or passes `force`.
        """
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"{self.path} exists and is not a directory")
        if is_run_directory(self.path):
            if force:
                self._clear()
            elif (why := self.config_difference(config)) is not None:
                raise FileExistsError(
                    f"{self.path} already holds a different run ({why}); "
                    "use --force to replace it or --resume to continue it, or choose another --out"
                )
        self.path.mkdir(parents=True, exist_ok=True)
        self.steps_dir.mkdir(exist_ok=True)
        self.write_config(config)

    def config_difference(self, config: dict) -> str | None:
        """How the run here differs from `config` (as config.toml would read it back), or None if it is the same."""
        if not self.config_path.is_file():
            return "it has a summary.json but no config.toml to compare with"
        old, new = self.read_config(), _toml_round_trip(config)
        return None if old == new else describe_difference(old, new)

    def _clear(self) -> None:
        for name in _RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        if self.steps_dir.is_dir():
            shutil.rmtree(self.steps_dir)
        for leftover in self.path.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)

    # -- config --------------------------------------------------------------------------

    def write_config(self, config: dict) -> None:
        """Write the config as TOML. TOML has no null: keys whose value is None are left out."""
        import tomli_w

        text = tomli_w.dumps(_toml_ready(config))
        atomic_write(self.config_path, text.encode("utf-8"))

    def read_config(self) -> dict:
        with open(self.config_path, "rb") as f:
            return tomllib.load(f)

    # -- per-iteration records -----------------------------------------------------------

    def chunk_paths(self) -> list[Path]:
        """The step chunks in write order (by chunk number)."""
        if not self.steps_dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.steps_dir.iterdir() if (m := _CHUNK.match(p.name))]
        return [p for _, p in sorted(found)]

    def append_steps(self, records: dict) -> None:
        """Write `records` (equal-length 1-D arrays) as the next chunk; empty input writes nothing.

        Columns must match the chunks already written, and the iterations must come after
        theirs (after a resume, call `truncate_steps` first).
        """
        table = _steps_table(records)
        if table.num_rows == 0:
            return
        chunks = self.chunk_paths()
        if chunks:
            names = pq.read_schema(chunks[-1]).names
            if names != table.column_names:
                raise ValueError(
                    f"step columns {table.column_names} differ from the chunks already in "
                    f"{self.steps_dir} ({names}); a run keeps the same sites throughout"
                )
            last_iteration = int(_iterations(chunks[-1]).max())
            first_new = int(table.column("iteration").to_numpy().min())
            if first_new <= last_iteration:
                raise ValueError(
                    f"steps already hold iteration {last_iteration} and the new records start at "
                    f"{first_new}; call truncate_steps({first_new - 1}) before writing them again"
                )
            number = int(_CHUNK.match(chunks[-1].name).group(1)) + 1
        else:
            self.steps_dir.mkdir(parents=True, exist_ok=True)
            number = 1
        atomic_write(self.steps_dir / f"part-{number:05d}.parquet", _parquet_bytes(table))

    def truncate_steps(self, after_iteration: int) -> None:
        """Drop every record with `iteration > after_iteration` (a resume rewinds to its checkpoint)."""
        # Newest chunk first, so a crash half-way leaves a prefix of the records plus at most
        # one chunk that a second call trims; chunk numbers stay contiguous.
        for path in reversed(self.chunk_paths()):
            iterations = _iterations(path)
            if iterations.size and iterations.min() > after_iteration:
                path.unlink()
            elif iterations.size and iterations.max() > after_iteration:
                table = pq.read_table(path)
                kept = table.filter(pa.array(iterations <= after_iteration))
                atomic_write(path, _parquet_bytes(kept))
            else:
                break  # chunks are written in iteration order: the older ones are all kept

    def read_steps(self, columns: list[str] | None = None) -> dict[str, np.ndarray]:
        """All records, concatenated in iteration order; `columns` reads a subset."""
        chunks = self.chunk_paths()
        if not chunks:
            empty = {
                "iteration": np.zeros(0, np.int64),
                "epoch": np.zeros(0, np.int64),
                "dw": np.zeros(0, np.float64),
                "da": np.zeros(0, np.float64),
            }
            return {k: v for k, v in empty.items() if columns is None or k in columns}
        table = pa.concat_tables(pq.read_table(p, columns=columns) for p in chunks)
        out = {name: table.column(name).to_numpy() for name in table.column_names}
        if "iteration" in out and np.any(np.diff(out["iteration"]) < 0):
            order = np.argsort(out["iteration"], kind="stable")
            out = {k: v[order] for k, v in out.items()}
        return out

    def sites(self) -> list[str]:
        """The site names present in the step records (from their `da:<site>` columns)."""
        chunks = self.chunk_paths()
        if not chunks:
            return []
        return [n[3:] for n in pq.read_schema(chunks[0]).names if n.startswith("da:")]

    # -- per-epoch scores ----------------------------------------------------------------

    def write_epochs(self, rows: list[dict]) -> None:
        """Rewrite epochs.parquet with all epochs so far (one dict per epoch)."""
        names = list(_EPOCH_COLUMNS)
        for row in rows:
            names += [k for k in row if k not in names]
        fields = [pa.field(n, _EPOCH_COLUMNS.get(n, _infer_type(rows, n))) for n in names]
        data = {n: [_plain(row.get(n)) for row in rows] for n in names}
        table = pa.table(data, schema=pa.schema(fields))
        atomic_write(self.epochs_path, _parquet_bytes(table))

    def read_epochs(self) -> list[dict]:
        if not self.epochs_path.is_file():
            return []
        return pq.read_table(self.epochs_path).to_pylist()

    # -- summary -------------------------------------------------------------------------

    def write_summary(self, summary: dict) -> None:
        """Write summary.json. Strict JSON: NaN and infinities are written as null."""
        status = summary.get("status")
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        text = json.dumps(json_ready(summary), indent=2, allow_nan=False) + "\n"
        atomic_write(self.summary_path, text.encode("utf-8"))

    def read_summary(self) -> dict | None:
        """The summary, or None when the run has not written one yet."""
        if not self.summary_path.is_file():
            return None
        with open(self.summary_path, encoding="utf-8") as f:
            try:
                return json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.summary_path} is not valid JSON: {e}") from None


def is_run_directory(path) -> bool:
    """True when `path` is a folder holding a run (its config.toml or summary.json)."""
    path = Path(path)
    return (path / "config.toml").is_file() or (path / "summary.json").is_file()


def software_versions() -> dict:
    """Versions of Python and of the packages that decide a run's numbers."""
    versions = {"python": sys.version.split()[0]}
    for name in ("torch", "numpy", "regimes", "pyarrow"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# -- helpers ---------------------------------------------------------------------------------


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a hidden temporary file in the same folder, then rename.

    A reader (or a crash) sees the old file or the new one, never a part of one.
    """
    path = Path(path)
    # Not tempfile.mkstemp: its files are private (0600); this one gets the umask's mode.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _iterations(chunk: Path) -> np.ndarray:
    return pq.read_table(chunk, columns=["iteration"]).column("iteration").to_numpy()


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _steps_table(records: dict) -> pa.Table:
    missing = [k for k in _STEP_REQUIRED if k not in records]
    if missing:
        raise KeyError(f"step records need the columns {list(_STEP_REQUIRED)}; missing {missing}")
    arrays, length = {}, None
    # Fixed columns first, then the others in the caller's order.
    for name in list(_STEP_REQUIRED) + [k for k in records if k not in _STEP_REQUIRED]:
        value = np.asarray(records[name])
        if value.ndim != 1:
            raise ValueError(f"step column {name!r} must be 1-D, got shape {value.shape}")
        if length is not None and value.size != length:
            raise ValueError(f"step columns have different lengths: {name!r} has {value.size}, expected {length}")
        length = value.size
        if name in _INT_COLUMNS:
            as_int = value.astype(np.int64)
            if value.size and not np.array_equal(as_int, value):
                raise ValueError(f"step column {name!r} must hold integers")
            value = as_int
        else:
            value = value.astype(np.float64)
        arrays[name] = value
    return pa.table(arrays)


def _infer_type(rows: list[dict], name: str) -> pa.DataType:
    values = [row[name] for row in rows if row.get(name) is not None]
    if values and all(isinstance(v, (bool, np.bool_)) for v in values):
        return pa.bool_()
    if values and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return pa.int64()
    if all(isinstance(v, (int, float, np.integer, np.floating)) for v in values):
        return pa.float64()
    return pa.string()


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    return value


def json_ready(value):
    """`value` as strict JSON takes it: plain containers and scalars, NaN and infinities as None."""
    if isinstance(value, dict):
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


def _toml_ready(value):
    if isinstance(value, dict):
        return {str(k): _toml_ready(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        if any(v is None for v in value):
            raise ValueError(f"TOML cannot store None inside a list: {value!r}")
        return [_toml_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _toml_ready(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def _toml_round_trip(config: dict) -> dict:
    """`config` as it reads back from config.toml (what create() compares)."""
    import tomli_w

    return tomllib.loads(tomli_w.dumps(_toml_ready(config)))


def describe_difference(old: dict, new: dict, limit: int = 4) -> str:
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
