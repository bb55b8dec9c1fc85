"""The records room: every file a run or a sweep leaves on disk, written and read here only.

- `RunDirectory` (records/run.py): one run's folder: config, step and epoch tables, summary,
  figure, checkpoint, error, and the lock that keeps it to one writer.
- `SweepDirectory` (records/sweep.py): a sweep's folder: its description, tables, selection,
  and the run directories of its trials and seeds; `find_runs` finds runs and sweeps.
- `RunSummary` and `Status` (records/summary.py): the typed summary and the one status vocabulary.
- records/files.py: atomic writes and the plain-data forms of JSON and TOML.

No module outside this package spells a file name; ask the directory classes for paths.
"""

from regimes.records.files import atomic_write, describe_difference, json_ready, plain_state
from regimes.records.run import (
    DamagedRecordError,
    RunDirectory,
    RunDirectoryError,
    RunLockedError,
    is_run_directory,
    load_state,
)
from regimes.records.summary import (
    DONE,
    NEURON_FIELDS,
    STATUSES,
    RunSummary,
    Status,
    software_versions,
    study_fields,
    validity,
)
from regimes.records.sweep import SweepDirectory, find_runs, is_sweep_directory

__all__ = [
    "RunDirectory",
    "SweepDirectory",
    "RunSummary",
    "NEURON_FIELDS",
    "Status",
    "DONE",
    "STATUSES",
    "RunDirectoryError",
    "RunLockedError",
    "DamagedRecordError",
    "is_run_directory",
    "is_sweep_directory",
    "find_runs",
    "software_versions",
    "study_fields",
    "validity",
    "atomic_write",
    "json_ready",
    "describe_difference",
    "load_state",
    "plain_state",
]
