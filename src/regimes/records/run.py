"""The run directory: everything one training run leaves behind, readable by pandas or polars.

```
RUN/
  config.toml       the resolved config
  steps/            per-iteration records, one Parquet file per chunk (part-00001.parquet, ...):
                    iteration, epoch (int64), dw, da and one "da:<site>" column per site (float64)
  epochs.parquet    per-epoch scores, rewritten whole each epoch
  geometry.parquet  per-epoch region distances and stability radii over the probe, with
                    the next epoch's steps (config `geometry = true`; regimes.experiment.geometry)
  summary.json      the run's numbers, status and software versions (a `RunSummary`)
  figure.png        the run's figure (regimes.plots.save_run_figure)
  checkpoint.pt     what a resume needs (the runner's state: tensors and plain data, saved with
                    torch.save and read with torch.load(weights_only=True): nothing in it runs code)
  error.txt         the traceback of a failed run (a sweep's trial that raised)
  .lock             held (flock) by the one process that writes the run; its PID inside
```

`pd.read_parquet("RUN/steps")` and `pl.read_parquet("RUN/steps/*.parquet")` open the records.
Every file is written atomically (`regimes.records.files.atomic_write`), and one process at
a time writes a run: `with run_dir.writer():` holds an OS lock on `.lock` (released however the
process ends, kill -9 included); a second writer gets `RunLockedError` naming the first's PID.
No file is written, and no lock taken, through a symbolic link (`records.files.refuse_link`), and
`create(force=True)` / `remove()` delete only the files above and the chunks of steps/ and
tensor_steps/: a user's file or a nested run directory stays.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import shlex
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from regimes.errors import DamagedInputError, NoRunError, RunExistsError
from regimes.records.files import (
    RunDirectoryError,
    atomic_write,
    describe_difference,
    parquet_bytes,
    plain_state,
    read_json,
    read_toml,
    real_folder,
    refuse_link,
    toml_round_trip,
    write_json,
    write_toml,
)
from regimes.records.summary import RunSummary

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock, one writer is then up to the user
    fcntl = None

__all__ = [
    "RunDirectory",
    "RunDirectoryError",
    "RunLockedError",
    "DamagedRecordError",
    "is_run_directory",
    "load_state",
]


class RunLockedError(RunDirectoryError):
    """Another process is writing the run: one writer per run directory."""


class DamagedRecordError(RunDirectoryError, DamagedInputError):
    """A file of the run cannot be read (cut short or overwritten outside regimes)."""


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
_TEMPORARY = re.compile(r"^\..+\.tmp$")  # atomic_write's, left by a killed process


class RunDirectory:
    """One run's folder. Stores its path only; every method reads or writes the disk.

    The class attributes name the files, for messages that point a user at one.
    """

    CONFIG = "config.toml"
    STEPS = "steps"
    TENSORS = "tensor_steps"  # the per-tensor weight change, long: iteration, epoch, tensor, dw
    EPOCHS = "epochs.parquet"
    GEOMETRY = "geometry.parquet"  # the theory's instruments per epoch (config `geometry`)
    SUMMARY = "summary.json"
    FIGURE = "figure.png"
    CHECKPOINT = "checkpoint.pt"
    ERROR = "error.txt"
    LOCK = ".lock"  # the writer's lock, kept for the folder's life: a removed one lets two writers in
    # Files a run owns; create(force=True) removes these (and steps/) and nothing else the user put there.
    FILES = (CONFIG, EPOCHS, GEOMETRY, SUMMARY, FIGURE, CHECKPOINT, ERROR)

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
    def tensors_dir(self) -> Path:
        return self.path / self.TENSORS

    @property
    def epochs_path(self) -> Path:
        return self.path / self.EPOCHS

    @property
    def geometry_path(self) -> Path:
        return self.path / self.GEOMETRY

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

    def has_records(self) -> bool:
        """True once the run finished an epoch: it has step chunks, epoch rows or a checkpoint."""
        return self.has_checkpoint() or self.epochs_path.is_file() or bool(self.chunk_paths())

    @property
    def lock_path(self) -> Path:
        return self.path / self.LOCK

    # -- lifecycle -----------------------------------------------------------------------

    def writer(self, wait: float = 2.0):
        """Hold the run's writer lock for the block: the one process that writes this run.

        Makes the folder if need be. The lock is `fcntl.flock` on `.lock` (the holder's PID
        written inside), so the operating system releases it however the process ends, kill
        -9 included. A lock still held after `wait` seconds (time for a killed process to
        finish dying) is `RunLockedError` naming the holder; an --out that is a file, or a
        folder that cannot be written, is a one-line error too.
        """
        return writer_lock(self.path, self.lock_path, wait, "a `regimes run` or a sweep's trial")

    def remove(self, up_to=None) -> None:
        """Remove the run's files and lock (nothing else the user put there); with `up_to`, also
        the folder and its parents up to and including `up_to` (those a failed start made), each
        only when it is left empty."""
        self._clear()
        self.lock_path.unlink(missing_ok=True)
        if up_to is None:
            return
        path, up_to = self.path.absolute(), Path(up_to).absolute()
        folders = [path, *(p for p in path.parents if p == up_to or up_to in p.parents)]
        for folder in folders:
            try:
                folder.rmdir()  # only when empty: anything the user put there stays
            except OSError:
                break

    def create(self, config: Mapping, force: bool = False) -> None:
        """Make the folder and write `config`.

        A folder that already holds a run with a different config is refused
        (FileExistsError) unless `force`, which removes that run's files first. A run with
        the same config is left as it is: the caller resumes it or passes `force`. A run
        that recorded nothing (it ended before its first epoch) is replaced either way.
        """
        make_folder(self.path)
        if is_run_directory(self.path):
            if force or not self.has_records():
                self._clear()
            elif (why := self.config_difference(config)) is not None:
                raise RunExistsError(
                    f"{self.path} already holds a different run ({why}); "
                    "use --force to replace it or --resume to continue it, or choose another --out"
                )
        real_folder(self.steps_dir)
        self.write_config(config)

    def check_resumable(self) -> None:
        """Raise FileNotFoundError, saying how to start it, unless a run to resume is here."""
        if not self.has_config():
            raise NoRunError(
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
        if refuse_link(staging).is_dir():
            shutil.rmtree(staging)  # a copy a killed process left half-made
        # symlinks=True: a link in the run is copied as a link, never read through
        shutil.copytree(self.path, staging, symlinks=True, ignore=shutil.ignore_patterns(self.LOCK))
        staging.rename(target)
        return RunDirectory(target)

    def _clear(self) -> None:
        """Remove what regimes wrote here: its named files, the chunks of steps/ and tensor_steps/
        and left-over temporary files. Anything else (a user's file, a nested run directory)
        stays, and so do the folders holding it; a link is removed, never followed."""
        for name in self.FILES:
            (self.path / name).unlink(missing_ok=True)
        for folder in (self.steps_dir, self.tensors_dir):
            if refuse_link(folder).is_dir():
                for path in folder.iterdir():
                    if (_CHUNK.match(path.name) or _TEMPORARY.match(path.name)) and not path.is_dir():
                        path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty
        for leftover in self.path.glob(".*.tmp"):
            if not leftover.is_dir():
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
        return _chunk_paths(self.steps_dir)

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
            names = _read(pq.read_schema, chunks[-1]).names
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
            real_folder(self.steps_dir)
            number = 1
        atomic_write(self.steps_dir / f"part-{number:05d}.parquet", parquet_bytes(table))

    def truncate_steps(self, after_iteration: int) -> None:
        """Drop every record with `iteration > after_iteration` (a resume rewinds to its checkpoint),
        in the step table and the per-tensor table alike."""
        for folder in (self.steps_dir, self.tensors_dir):
            _truncate_chunks(_chunk_paths(folder), after_iteration)

    def append_tensor_steps(self, iterations, epoch: int, names: list[str], changes: np.ndarray) -> None:
        """Write the per-tensor weight change of `iterations` ([N]; `changes` [N, P], each
        tensor's mean |dw|, columns as `names`) as the next chunk of the long table."""
        iterations = np.asarray(iterations, dtype=np.int64)
        if iterations.size == 0:
            return
        changes = np.asarray(changes, dtype=np.float64).reshape(iterations.size, len(names))
        table = pa.table(
            {
                "iteration": np.repeat(iterations, len(names)),
                "epoch": np.full(changes.size, epoch, dtype=np.int64),
                "tensor": pa.DictionaryArray.from_arrays(
                    np.tile(np.arange(len(names), dtype=np.int32), iterations.size), pa.array(names)
                ),
                "dw": changes.reshape(-1),
            }
        )
        chunks = _chunk_paths(self.tensors_dir)
        number = int(_CHUNK.match(chunks[-1].name).group(1)) + 1 if chunks else 1
        real_folder(self.tensors_dir)
        atomic_write(self.tensors_dir / f"part-{number:05d}.parquet", parquet_bytes(table))

    def read_tensor_steps(self) -> dict[str, np.ndarray]:
        """The per-tensor table: iteration, epoch, tensor (names), dw; empty when not written."""
        chunks = _chunk_paths(self.tensors_dir)
        if not chunks:
            return {
                "iteration": np.zeros(0, np.int64),
                "epoch": np.zeros(0, np.int64),
                "tensor": np.zeros(0, object),
                "dw": np.zeros(0),
            }
        table = pa.concat_tables(_read(pq.read_table, p) for p in chunks)
        out = {name: table.column(name).to_numpy() for name in ("iteration", "epoch", "dw")}
        out["tensor"] = np.asarray(table.column("tensor").cast(pa.string()).to_pylist(), dtype=object)
        return out

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
        # promote: a run resumed by a newer version has chunks with more columns (da_units, ...): null before
        table = pa.concat_tables((_read(pq.read_table, p, columns=columns) for p in chunks), promote_options="default")
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
        return [n[3:] for n in _read(pq.read_schema, chunks[0]).names if n.startswith("da:")]

    # -- per-epoch scores ----------------------------------------------------------------

    def write_epochs(self, rows: list[dict]) -> None:
        """Rewrite epochs.parquet with all epochs so far (one dict per epoch)."""
        atomic_write(self.epochs_path, parquet_bytes(_rows_table(rows, _EPOCH_COLUMNS)))

    def read_epochs(self) -> list[dict]:
        if not self.epochs_path.is_file():
            return []
        return _read(pq.read_table, self.epochs_path).to_pylist()

    # -- the theory's instruments, per epoch ----------------------------------------------

    def write_geometry(self, rows: list[dict]) -> None:
        """Rewrite geometry.parquet with every epoch's row so far (`regimes.experiment.geometry`)."""
        atomic_write(self.geometry_path, parquet_bytes(_rows_table(rows, dict.fromkeys(_INT_COLUMNS, pa.int64()))))

    def read_geometry(self) -> list[dict]:
        """The geometry rows, one per epoch (epoch 0: the initial weights); [] when none were recorded."""
        if not self.geometry_path.is_file():
            return []
        return _read(pq.read_table, self.geometry_path).to_pylist()

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
            raise DamagedInputError(f"{self.summary_path} holds no run summary: {e}") from None

    # -- checkpoint ----------------------------------------------------------------------

    def write_checkpoint(self, state: dict) -> None:
        """Save `state` (tensors and plain data) with torch.save, atomically. numpy arrays and
        scalars are saved as tensors and numbers (`plain_state`), so that `read_checkpoint` loads
        it with `torch.load(weights_only=True)`; any other object is a TypeError."""
        import torch

        buffer = io.BytesIO()
        torch.save(plain_state(state), buffer)
        atomic_write(self.checkpoint_path, buffer.getvalue())

    def read_checkpoint(self, map_location="cpu") -> dict | None:
        """The last checkpoint, or None when the run has none (it ended no epoch yet).

        A checkpoint that cannot be read is a `DamagedRecordError` saying what is kept and
        how to start the run again."""
        if not self.has_checkpoint():
            return None
        try:
            return load_state(self.checkpoint_path, map_location=map_location)
        except DamagedRecordError as error:
            raise DamagedRecordError(f"{error}; the run cannot continue. {self._kept_and_restart()}") from None

    def check_records(self) -> None:
        """Read every step and per-tensor chunk's and the epoch table's metadata: a damaged file is a
        `DamagedRecordError` saying what is kept and how to start again (a resume checks
        first, so that it changes nothing on a run it cannot continue)."""
        tables = [*self.chunk_paths(), *_chunk_paths(self.tensors_dir)]
        whole = [p for p in (self.epochs_path, self.geometry_path) if p.is_file()]
        for path in [*tables, *whole]:
            try:
                _read(pq.read_metadata, path)
            except DamagedRecordError as error:
                raise DamagedRecordError(
                    f"{error}, so the run cannot continue with its records whole. {self._kept_and_restart()}"
                ) from None

    def _kept_and_restart(self) -> str:
        return (
            f"Nothing in {self.path} was changed: its records are kept as they are. "
            f"To train it again from the start: `regimes run {self.config_path} --out {self.path} --force` "
            "(replaces them), or the same with another --out (keeps them)"
        )

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


def load_state(path, map_location="cpu") -> dict:
    """The dict saved at `path` by `torch.save`, read with `torch.load(weights_only=True)`:
    tensors and plain data only, so that nothing in the file can run code.

    A file that needs unpickling (a checkpoint of an older regimes, with numpy's and Python's
    random states inside, or a hostile one), a damaged file, or one that holds no dict is a
    one-line `DamagedRecordError` naming it; the first says how to convert a file you trust
    (`regimes.records.plain_state`).
    """
    import pickle

    import torch

    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch.load raises many types for a damaged or unsafe file
        text = str(error)
        if isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in text:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
            why = f"it names {found.group(1)}" if found else "it is not tensors and plain data"
            raise DamagedRecordError(
                f"{path} cannot be read without unpickling ({why}), which could run code, so regimes does not "
                "load it; it is damaged, hostile, or from an older regimes. Only if you trust it, convert it once: "
                f"`{_conversion_command(path)}`"
            ) from None
        first = text.strip().splitlines()[0] if text.strip() else ""
        raise DamagedRecordError(f"{path} cannot be read ({type(error).__name__}: {first})") from None
    if not isinstance(state, dict):
        raise DamagedRecordError(f"{path} holds no checkpoint (a {type(state).__name__})")
    return state


@contextlib.contextmanager
def writer_lock(folder: Path, lock_path: Path, wait: float, writers: str):
    """Hold an exclusive flock on `lock_path` in `folder` (made if need be) for the block, the
    holder's PID written inside; `RunLockedError` naming the holder when another process holds
    it after `wait` seconds (`writers`: who takes such a lock, for the message)."""
    make_folder(folder)
    try:
        # O_NOFOLLOW: a `.lock` that is a link must not make us truncate and write its target.
        fd = os.open(refuse_link(lock_path), os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as error:
        if error.errno == errno.ELOOP:
            refuse_link(lock_path)  # made a link since: the same message
        raise _cannot_write(folder, error) from None
    try:
        if fcntl is not None and not _lock(fd, wait):
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            process = f"process {holder}" if holder.isdigit() else "another process"
            raise RunLockedError(
                f"{folder} is being written by {process} ({writers}); "
                "wait for it to end, stop it (Ctrl-C or kill; it can be resumed), or choose another --out"
            )
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        yield
    finally:
        os.close(fd)  # releases the lock


def make_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} exists and is not a directory: choose another --out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a folder on the way is a file
        raise NotADirectoryError(f"{folder}: a folder on its path is a file: choose another --out") from None
    except OSError as error:
        raise _cannot_write(folder, error) from None


def _cannot_write(folder: Path, error: OSError) -> Exception:
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "read-only file system" if error.errno == errno.EROFS else "permission denied"
        return RunDirectoryError(f"cannot write into {folder} ({why}): choose another --out")
    return error


def _lock(fd: int, wait: float) -> bool:
    """Take an exclusive flock on `fd`, trying for up to `wait` seconds; False if another holds it."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _chunk_paths(folder: Path) -> list[Path]:
    """A chunked table's files in write order (by chunk number)."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHUNK.match(p.name))]
    return [p for _, p in sorted(found)]


def _truncate_chunks(chunks: list[Path], after_iteration: int) -> None:
    # Newest chunk first, so a crash half-way leaves a prefix of the records plus at most
    # one chunk that a second call trims; chunk numbers stay contiguous.
    for path in reversed(chunks):
        iterations = _iterations(path)
        if iterations.size and iterations.min() > after_iteration:
            path.unlink()
        elif iterations.size and iterations.max() > after_iteration:
            table = _read(pq.read_table, path)
            kept = table.filter(pa.array(iterations <= after_iteration))
            atomic_write(path, parquet_bytes(kept))
        else:
            break  # chunks are written in iteration order: the older ones are all kept


def _iterations(chunk: Path) -> np.ndarray:
    return _read(pq.read_table, chunk, columns=["iteration"]).column("iteration").to_numpy()


def _read(reader, path: Path, **options):
    """`reader(path)` for a Parquet file; a file that is not one is a `DamagedRecordError` naming it."""
    try:
        return reader(path, **options)
    except (pa.ArrowException, OSError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise DamagedRecordError(f"{path} is damaged ({type(error).__name__}: {error})") from None


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


def _rows_table(rows: list[dict], known: Mapping[str, pa.DataType]) -> pa.Table:
    """A table of `rows` (dicts): the `known` columns first, with their types, then every other
    key in the order it first appears, its type inferred from the values."""
    names = list(known)
    for row in rows:
        names += [k for k in row if k not in names]
    fields = [pa.field(n, known.get(n) or _infer_type(rows, n)) for n in names]
    return pa.table({n: [_plain(row.get(n)) for row in rows] for n in names}, schema=pa.schema(fields))


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


def _conversion_command(path: Path) -> str:
    """The shell command that rewrites a trusted older checkpoint as plain state. The path is a
    Python literal inside a shell-quoted argument, so no name a run folder may have (quotes,
    `$(...)`) becomes code when the command is pasted."""
    code = (
        "import torch; from regimes.records import plain_state as p; "
        f"torch.save(p(torch.load({str(path)!r}, weights_only=False)), {str(path)!r})"
    )
    return f"python -c {shlex.quote(code)}"
