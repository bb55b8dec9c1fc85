"""The sweep directory (`regimes sweep`), and finding runs and sweeps under a folder.

```
sweeps/mlp-breast-cancer/
  sweep.json              the base config and the grid (a rerun checks it is the same sweep)
  trials/sgd-lr1e-2-wd1e-4/   one run directory per trial (`RunDirectory`)
  trials.parquet, .csv    one row per trial: the swept values, status, scores, AUCs, rho
  selected.json           the winning trial's row; with seeds, rho's mean, interval, semi-deviations
  seeds/seed0, seed1 ...  the winning configuration with each seed (--seeds N)
  seeds.parquet, .csv     one row per seed
  .lock                   held by the one `regimes sweep` that writes the folder (its PID inside)
```
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path, PurePosixPath

from regimes.errors import DamagedInputError, MissingInputError, NoRunError, RunExistsError
from regimes.records.files import (
    atomic_write,
    describe_difference,
    json_ready,
    parquet_bytes,
    read_json,
    refuse_link,
    write_json,
)
from regimes.records.run import RunDirectory, is_run_directory, writer_lock

__all__ = ["SweepDirectory", "is_sweep_directory", "find_runs"]


class SweepDirectory:
    """A sweep's folder: its description, tables and selection, and where its runs go.

    A run of the sweep is named by its path inside the folder ("trials/sgd-lr1e-2",
    "seeds/seed1"): the name the tables and selected.json record.
    """

    DESCRIPTION = "sweep.json"
    SELECTED = "selected.json"
    TRIALS = "trials"
    SEEDS = "seeds"
    TABLES = (TRIALS, SEEDS)  # a folder of runs and a table of their rows, each
    TABLE_FORMATS = ("parquet", "csv")
    LOCK = ".lock"  # held by the one `regimes sweep` that writes the sweep (each trial has its own)

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"SweepDirectory({str(self.path)!r})"

    # -- paths and names -------------------------------------------------------------------

    @property
    def description_path(self) -> Path:
        return self.path / self.DESCRIPTION

    @property
    def selected_path(self) -> Path:
        return self.path / self.SELECTED

    def table_path(self, table: str, fmt: str = "parquet") -> Path:
        if table not in self.TABLES or fmt not in self.TABLE_FORMATS:
            raise ValueError(f"a sweep has the tables {self.TABLES} as {self.TABLE_FORMATS}, not {table!r} as {fmt!r}")
        return self.path / f"{table}.{fmt}"

    def trial_name(self, trial: str) -> str:
        """The run name of a trial ("trials/sgd-lr1e-2-wd1e-4")."""
        return f"{self.TRIALS}/{trial}"

    def seed_name(self, seed: int) -> str:
        """The run name of the selected configuration with `seed` ("seeds/seed1")."""
        return f"{self.SEEDS}/seed{seed}"

    def run(self, name: str) -> RunDirectory:
        """The run directory of a run of this sweep, by its name ("trials/<trial>" or
        "seeds/seed<n>"). A name that would leave the sweep's folder or the folder of its kind
        (absolute, `..`, more parts) is a ValueError; a link on the way is refused (`refuse_link`)."""
        parts = PurePosixPath(str(name)).parts
        if len(parts) != 2 or parts[0] not in self.TABLES or parts[1] in ("..", ".") or "\\" in str(name):
            raise DamagedInputError(
                f"{name!r} names no run of the sweep {self.path} (a run is {self.TRIALS}/<trial> "
                f"or {self.SEEDS}/seed<n>)"
            )
        refuse_link(self.path / parts[0])
        return RunDirectory(refuse_link(self.path / parts[0] / parts[1]))

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def lock_path(self) -> Path:
        return self.path / self.LOCK

    def writer(self, wait: float = 2.0):
        """Hold the sweep's writer lock for the block: one `regimes sweep` writes its tables and
        selection at a time (a second is `RunLockedError`, naming the first's PID)."""
        return writer_lock(self.path, self.lock_path, wait, "a `regimes sweep`")

    def start(self, description: dict, force: bool = False) -> None:
        """Write sweep.json; refuse a folder that holds another sweep (unless `force`, which
        removes that sweep's runs and tables first). A link in the file's place is refused."""
        if refuse_link(self.description_path).is_file():
            if force:
                self.clear()
            else:
                old = self.read_description()
                new = json.loads(json.dumps(description))
                differs = [k for k in ("base", "grid") if old.get(k) != new.get(k)]
                if differs:
                    raise RunExistsError(
                        f"{self.path} holds another sweep (its {' and '.join(differs)} differ: {describe_difference(old, new)}); "
                        "choose another --out, or --force to start again there"
                    )
        elif self.path.is_dir() and any(p.name != self.LOCK for p in self.path.iterdir()) and not force:
            raise RunExistsError(f"{self.path} exists and holds no sweep; choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.description_path, (json.dumps(description, indent=2) + "\n").encode("utf-8"))

    def clear(self) -> None:
        """Remove the sweep's files and runs: what regimes wrote (`RunDirectory.remove`) and
        nothing else the user put there. A folder that still holds something stays."""
        self.description_path.unlink(missing_ok=True)
        self.selected_path.unlink(missing_ok=True)
        for table in self.TABLES:
            for fmt in self.TABLE_FORMATS:
                self.table_path(table, fmt).unlink(missing_ok=True)
            folder = refuse_link(self.path / table)
            if not folder.is_dir():
                continue
            for run in sorted(folder.iterdir()):
                if run.is_dir() and not run.is_symlink() and is_run_directory(run):
                    RunDirectory(run).remove(up_to=run)
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty

    def read_description(self) -> dict:
        return read_json(self.description_path)

    # -- tables and selection --------------------------------------------------------------

    def write_table(self, table: str, rows: list[dict]) -> None:
        """Write a table ("trials" or "seeds") as Parquet and CSV, one row per run."""
        import pyarrow as pa
        import pyarrow.csv as pcsv

        data = pa.Table.from_pylist([json_ready(r) for r in rows])
        atomic_write(self.table_path(table, "parquet"), parquet_bytes(data))
        buffer = pa.BufferOutputStream()
        pcsv.write_csv(data, buffer)
        atomic_write(self.table_path(table, "csv"), buffer.getvalue().to_pybytes())

    def read_table(self, table: str) -> list[dict]:
        """A table's rows (empty before the sweep has written it)."""
        import pyarrow.parquet as pq

        path = self.table_path(table, "parquet")
        return pq.read_table(path).to_pylist() if path.is_file() else []

    def write_selected(self, selected: dict) -> None:
        write_json(self.selected_path, selected)

    def read_selected(self) -> dict:
        """selected.json's content, or {} before the sweep has written it."""
        return read_json(self.selected_path) if self.selected_path.is_file() else {}


def is_sweep_directory(path) -> bool:
    """True when `path` is a folder that `regimes sweep` wrote (it holds sweep.json)."""
    return SweepDirectory(path).description_path.is_file()


def find_runs(path) -> list[Path]:
    """The run and sweep directories at `path`: `path` itself when it is one, else every one
    in the folders under it (runs inside a sweep belong to the sweep), in path order.

    Raises FileNotFoundError when `path` does not exist or holds none.
    """
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{path} does not exist")
    if is_sweep_directory(path) or is_run_directory(path):
        return [path]
    inside = []
    if path.is_dir():
        sweeps = sorted(p.parent for p in path.rglob(SweepDirectory.DESCRIPTION))
        runs = sorted(p.parent for p in path.rglob(RunDirectory.SUMMARY) if not any(s in p.parents for s in sweeps))
        inside = sorted(sweeps + runs)
    if not inside:
        raise NoRunError(
            f"{path} holds no run: no {RunDirectory.SUMMARY} in it or in any folder under it "
            "(a run directory is what `regimes run --out DIR` writes)"
        )
    return inside
