"""Safe to share, honest to read (issue 18): nothing read from disk runs code, nothing written
follows a symbolic link or leaves the folder the user named, nothing a user made is lost, every
damaged input and every mistake is one line, and nothing is silently wrong."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from regimes.records import DamagedRecordError, RunDirectory, load_state, plain_state

MARKER = "regimes-test-marker"


class _Hostile:
    """Unpickling this writes a marker file: the code a downloaded checkpoint could run."""

    def __init__(self, folder: Path):
        self.folder = str(folder)

    def __reduce__(self):
        return (Path.write_text, (Path(self.folder) / MARKER, "ran"))


# ------------------------------------------------------------- nothing read from disk runs code


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_hostile_checkpoint_is_refused_and_runs_nothing(tmp_path, protocol):
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    buffer = io.BytesIO()
    torch.save({"epoch": 1, "payload": _Hostile(tmp_path)}, buffer, pickle_protocol=protocol)
    run.checkpoint_path.write_bytes(buffer.getvalue())
    with pytest.raises(DamagedRecordError, match="without unpickling") as caught:
        run.read_checkpoint()
    assert not (tmp_path / MARKER).exists()
    assert "\n" not in str(caught.value) and "weights_only=False" in str(caught.value)
    with pytest.raises(DamagedRecordError, match="without unpickling"):
        load_state(run.checkpoint_path)
    assert not (tmp_path / MARKER).exists()


def test_a_plain_state_checkpoint_loads(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    state = {"epoch": 3, "weights": torch.arange(4.0), "rng": {"python": [3, [1, 2, 3], None], "name": "MT19937"},
             "numbers": [0.5, 2], "nested": {"a": (1, 2)}}  # fmt: skip
    run.write_checkpoint(state)
    loaded = run.read_checkpoint()
    assert loaded["epoch"] == 3 and torch.equal(loaded["weights"], torch.arange(4.0))
    assert loaded["rng"] == state["rng"] and loaded["nested"] == {"a": (1, 2)}
    assert load_state(run.checkpoint_path)["numbers"] == [0.5, 2]


def test_an_older_checkpoint_is_refused_with_a_conversion_that_works(tmp_path):
    import random

    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    old = {"epoch": 2, "rng": {"numpy": np.random.get_state(), "python": random.getstate()}}
    buffer = io.BytesIO()
    torch.save(old, buffer)
    run.checkpoint_path.write_bytes(buffer.getvalue())
    with pytest.raises(DamagedRecordError, match="numpy") as caught:
        run.read_checkpoint()
    assert "plain_state" in str(caught.value) and "\n" not in str(caught.value)
    # the conversion the message gives, for a file the user trusts
    torch.save(plain_state(torch.load(run.checkpoint_path, weights_only=False)), run.checkpoint_path)
    converted = run.read_checkpoint()
    assert converted["epoch"] == 2
    assert np.array_equal(converted["rng"]["numpy"][1].numpy(), old["rng"]["numpy"][1])
    assert converted["rng"]["python"][1] == list(old["rng"]["python"][1])


def test_a_damaged_checkpoint_is_one_line(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    run.checkpoint_path.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(DamagedRecordError, match="checkpoint.pt cannot be read") as caught:
        run.read_checkpoint()
    assert "\n" not in str(caught.value)
