"""An interrupted test run leaves no process behind, torchrun's workers included.

A test run (a pytest of its own) starts a long `torchrun -m regimes run` through
`processes.run`, as tests/test_distributed.py does; once torchrun's workers train, the test
run is stopped as a user (Ctrl-C) or a CI timeout (SIGTERM) stops it. Then no process that
belongs to that run may be left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import regimes

INNER = textwrap.dedent(
    """
    import sys
    import processes

    def test_a_long_torchrun(tmp_path):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                   "-m", "regimes", "run", "mlp-breast-cancer", "--set", "max_epochs=100000",
                   "--threads", "1", "--quiet", "--out", {out!r}]
        processes.run(command, timeout=600)
    """
)


RUN_PYTEST_AS_FROM_A_TERMINAL = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "import pytest; sys.exit(pytest.main(sys.argv[1:]))"
)


def processes_naming(marker: str) -> list[psutil.Process]:
    """The live processes whose command line holds `marker`."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if marker in " ".join(process.info["cmdline"] or ()) and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stopped_test_run_leaves_no_torchrun_worker(tmp_path, stop):
    pytest.importorskip("torch.distributed.run")
    out = tmp_path / f"long-run-{stop.name}"
    (tmp_path / "test_inner.py").write_text(INNER.format(out=str(out)))
    tests = Path(__file__).parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tests), str(Path(regimes.__file__).parents[1])]),
        "OMP_NUM_THREADS": "1",
    }
    inner = subprocess.Popen(
        # A test run as a terminal starts it: Ctrl-C raises KeyboardInterrupt. (Started in the
        # background by a shell, as CI may be, a process inherits SIGINT ignored, and Python
        # then leaves it ignored.)
        [sys.executable, "-c", RUN_PYTEST_AS_FROM_A_TERMINAL, "-q", "-p", "no:cacheprovider", "-c", os.devnull]
        + ["-p", "conftest", "test_inner.py"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while len(processes_naming(str(out))) < 3:  # torchrun and its two workers
            assert inner.poll() is None, inner.stdout.read()
            assert time.time() < deadline, "torchrun's workers did not start within 120 s"
            time.sleep(0.2)
        while not (out / "steps").exists():  # the workers are training
            assert time.time() < deadline, "the run did not write its first epoch within 120 s"
            time.sleep(0.2)
        inner.send_signal(stop)  # the test run alone, as a CI timeout stops it
        try:
            inner.communicate(timeout=120)  # read its output as it ends: a full pipe would block it
        except subprocess.TimeoutExpired:
            inner.kill()
            left = [" ".join(p.info["cmdline"] or ())[:120] for p in processes_naming(str(out))]
            pytest.fail(
                f"the test run did not end within 120 s of {stop.name}: {inner.communicate()[0][-2000:]} {left}"
            )
        time.sleep(1)  # an orphaned worker would still be training now
        assert processes_naming(str(out)) == [], f"left behind after {stop.name}"
    finally:
        for process in processes_naming(str(out)):
            process.kill()
        if inner.poll() is None:
            inner.kill()
