"""The tests' child processes, reaped whatever happens.

Each command starts in a session of its own, and it and every process under it are killed
when the test ends, fails, times out or is interrupted: `subprocess.run` kills only the
process it started, and torchrun starts each worker in a session of its own, so its workers
lived on after a timeout or a Ctrl-C. `conftest.py` turns SIGTERM into KeyboardInterrupt,
so a killed test run reaps them too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import psutil


@contextlib.contextmanager
def process_group(command, **popen):
    """`subprocess.Popen(command, **popen)` in its own session; on leaving, the command and
    every process under it still there (its workers, in whatever session) are killed."""
    process = subprocess.Popen(command, start_new_session=True, **popen)
    try:
        yield process
    finally:
        try:
            family = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        for child in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        process.wait()
        psutil.wait_procs(family, timeout=10)  # killed; a zombie nobody reaps needs no longer wait


def run(command, timeout: float, **popen) -> subprocess.CompletedProcess:
    """`subprocess.run(command, capture_output=True, text=True, timeout=timeout)`, with the
    whole process group killed on a timeout, an interrupt, or when the command leaves
    workers behind."""
    with process_group(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen) as process:
        stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
