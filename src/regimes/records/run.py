"""The run directory: everything one training run leaves behind, readable by pandas or polars.

```
RUN/
  config.toml       the resolved config
  steps/            per-iteration records, one Parquet file per chunk (part-00001.parquet, ...):
                    iteration, epoch (int64), dw, da and one "da:<site>" column per site (float64)
  epochs.parquet    per-epoch scores, rewritten whole each epoch
  summary.json      the run's numbers, status and software versions (a `RunSummary`)
  figure.png        the run's figure (regimes.plots.save_run_figure)
  checkpoint.pt     what a resume needs (the runner's state, saved with torch.save)
  error.txt         the traceback of a failed run (a sweep's trial that raised)
```

`pd.read_parquet("RUN/steps")` and `pl.read_parquet("RUN/steps/*.parquet")` open the records.
Every file is written atomically (`regimes.records.files.atomic_write`).
"""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from regimes.records.files import (
    atomic_write,
    describe_difference,
    parquet_bytes,
    read_json,
    read_toml,
    toml_round_trip,
    write_json,
    write_toml,
)  # fmt: skip
from regimes.records.summary import RunSummary

__all__ = ["RunDirectory", "is_run_directory"]

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


class RunDirectory:
    """One run's folder. Stores its path only; every method reads or writes the disk.

    The class attributes name the files, for messages that point a user at one.
    """

    CONFIG = "config.toml"
    STEPS = "steps"
    EPOCHS = "epochs.parquet"
    SUMMARY = "summary.json"
    FIGURE = "figure.png"
    CHECKPOINT = "checkpoint.pt"
    ERROR = "error.txt"
    # Files a run owns; create(force=True) removes these (and steps/) and nothing else the user put there.
    FILES = (CONFIG, EPOCHS, SUMMARY, FIGURE, CHECKPOINT, ERROR)

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    # -- paths ---------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def steps_dir(self) -> Path:
        return self.path / self.STEPS

    @property
    def epochs_path(self) -> Path:
        return self.path / self.EPOCHS

    @property
    def summary_path(self) -> Path:
        return self.path / self.SUMMARY

    @property
    def figure_path(self) -> Path:
        return self.path / self.FIGURE

    @property
    def checkpoint_path(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def error_path(self) -> Path:
        return self.path / self.ERROR

    def has_config(self) -> bool:
        return self.config_path.is_file()

    def has_summary(self) -> bool:
        return self.summary_path.is_file()

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()

    # -- lifecycle -----------------------------------------------------------------------

    def create(self, config: Mapping, force: bool = False) -> None:
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

    def check_resumable(self) -> None:
        """Raise FileNotFoundError, saying how to start it, unless a run to resume is here."""
        if not self.has_config():
            raise FileNotFoundError(
                f"{self.path} holds no run to resume (no {self.CONFIG}); "
                f"start it with `regimes run PRESET --out {self.path}`"
            )

    def config_difference(self, config: Mapping) -> str | None:
        """How the run here differs from `config` (as config.toml would read it back), or None if it is the same."""
        if not self.has_config():
            return f"it has a {self.SUMMARY} but no {self.CONFIG} to compare with"
        old, new = self.read_config(), toml_round_trip(config)
        return None if old == new else describe_difference(old, new)

    def copy_to(self, path) -> RunDirectory:
        """Copy the whole run to `path` (which must not exist): whole or not at all."""
        target = Path(path)
        staging = target.with_name(f".{target.name}.copy")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(self.path, staging)
        staging.rename(target)
        return RunDirectory(target)

    def _clear(self) -> None:
        for name in self.FILES:
            (self.path / name).unlink(missing_ok=True)
        if self.steps_dir.is_dir():
            shutil.rmtree(self.steps_dir)
        for leftover in self.path.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)

    # -- config --------------------------------------------------------------------------

    def write_config(self, config: Mapping) -> None:
        """Write the config as TOML. TOML has no null: keys whose value is None are left out."""
        write_toml(self.config_path, config)

    def read_config(self) -> dict:
        return read_toml(self.config_path)

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
        atomic_write(self.steps_dir / f"part-{number:05d}.parquet", parquet_bytes(table))

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
                atomic_write(path, parquet_bytes(kept))
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
        atomic_write(self.epochs_path, parquet_bytes(table))

    def read_epochs(self) -> list[dict]:
        if not self.epochs_path.is_file():
            return []
        return pq.read_table(self.epochs_path).to_pylist()

    # -- summary -------------------------------------------------------------------------

    def write_summary(self, summary: RunSummary | Mapping) -> None:
        """Write summary.json (a mapping is read as `RunSummary.from_dict` reads it, so an
        unknown status is a ValueError). Strict JSON: NaN and infinities are written as null."""
        write_json(self.summary_path, RunSummary.from_dict(summary))

    def read_summary(self) -> RunSummary | None:
        """The summary, or None when the run has not written one yet."""
        if not self.has_summary():
            return None
        data = read_json(self.summary_path)
        try:
            return RunSummary.from_dict(data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{self.summary_path} holds no run summary: {e}") from None

    # -- checkpoint ----------------------------------------------------------------------

    def write_checkpoint(self, state: dict) -> None:
        """Save `state` (tensors and plain data) with torch.save, atomically."""
        import torch

        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write(self.checkpoint_path, buffer.getvalue())

    def read_checkpoint(self, map_location="cpu") -> dict | None:
        """The last checkpoint, or None when the run has none (it ended no epoch yet)."""
        if not self.has_checkpoint():
            return None
        import torch

        return torch.load(self.checkpoint_path, map_location=map_location, weights_only=False)

    # -- the error of a failed run ---------------------------------------------------------

    def write_error(self, text: str) -> None:
        """Keep what ended a failed run (a traceback); makes the folder if need be."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.error_path, text.encode("utf-8"))

    def read_error(self) -> str | None:
        return self.error_path.read_text(encoding="utf-8") if self.error_path.is_file() else None

    def clear_error(self) -> None:
        """Forget an earlier failure (the run has now gone through)."""
        self.error_path.unlink(missing_ok=True)


def is_run_directory(path) -> bool:
    """True when `path` is a folder holding a run (its config.toml or summary.json)."""
    directory = RunDirectory(path)
    return directory.has_config() or directory.has_summary()


# -- helpers ---------------------------------------------------------------------------------


def _iterations(chunk: Path) -> np.ndarray:
    return pq.read_table(chunk, columns=["iteration"]).column("iteration").to_numpy()


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
