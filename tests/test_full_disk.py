"""A disk that fills, or a file-size limit reached, in the middle of a run (issue: "Nothing a
user made is lost"): one line, exit 2, and the last finished epoch stays resumable.

The refusals are the kernel's own, not mocks: a file-size limit (RLIMIT_FSIZE, EFBIG) set
while epoch 3 trains, and a small tmpfs filled to the last byte while epoch 3 trains (ENOSPC;
mounting needs root, so that case skips elsewhere). Everything else is the real command line.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from regimes.records import RunDirectory

ARGS = ["mlp-breast-cancer", "--set", "max_epochs=4", "--threads", "1", "--quiet"]

# Runs `regimes run` with the disk made to refuse writes from the start of epoch 3 on.
SCRIPT = textwrap.dedent(
    """
    import errno, os, resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the kernel refuses the write (EFBIG) instead of killing us
    import regimes.experiment.training as training

    how, filler = sys.argv[1], sys.argv[2]
    train_epoch = training.train_epoch

    def fill_the_disk():
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"x" * 4096)
                    f.flush()
            except OSError as error:
                assert error.errno == errno.ENOSPC, error

    def refusing(state):
        if state.epoch == 3:
            if how == "file-size":
                resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
            else:
                fill_the_disk()
        return train_epoch(state)

    training.train_epoch = refusing
    from regimes.cli import main
    sys.exit(main(sys.argv[3:]))
    """
)


def run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "regimes", "run", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def check_refused_then_resumed(tmp_path, folder, how):
    out, reference = folder / "run", tmp_path / "reference"
    script = tmp_path / "refusing.py"
    script.write_text(SCRIPT)
    refused = subprocess.run(
        [sys.executable, str(script), how, str(folder / "filler"), "run", *ARGS, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 2, refused.stderr
    line = refused.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert line.startswith("regimes: error: no room to write ") and str(out) in line
    assert f"regimes run --resume {out}" in line
    run = RunDirectory(out)
    assert [row["epoch"] for row in run.read_epochs()] == [1, 2]  # the last finished epoch is kept
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")], "no half-written file is left"

    (folder / "filler").unlink(missing_ok=True)  # room again
    resumed = run_cli("--resume", str(out), "--threads", "1", "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert run_cli(*ARGS, "--out", str(reference), cwd=tmp_path).returncode == 0
    # the resumed run is the uninterrupted one, bit for bit (same machine, same threads)
    for table in ("steps", "tensor_steps"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / table), pd.read_parquet(reference / table))
    summary, expected = run.read_summary(), RunDirectory(reference).read_summary()
    assert summary["status"] == "finished" and summary["rho"] == expected["rho"]


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_file_size_limit_mid_run_is_one_line_and_the_run_resumes(tmp_path):
    check_refused_then_resumed(tmp_path, tmp_path, "file-size")


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs: room for a few epochs of the Breast Cancer run, and a disk we may fill."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root: the full-disk case runs where the tests run as root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_full_disk_mid_run_is_one_line_and_the_run_resumes(tmp_path, small_disk):
    check_refused_then_resumed(tmp_path, small_disk, "full-disk")
