"""What every test shares: a SIGTERM (a CI timeout, `kill`) ends the test run as Ctrl-C does,
so that cleanup runs: the child processes of `processes.py` are reaped, never left behind."""

from __future__ import annotations

import signal


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    signal.signal(signal.SIGTERM, _interrupt)
