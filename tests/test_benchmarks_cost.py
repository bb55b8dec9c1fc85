"""The cost benchmarks' pass/fail logic (never their timings: those are no unit test)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def parse(module, argv):
    parser = argparse.ArgumentParser()
    module.add_check_arguments(parser)
    return parser.parse_args(argv)


def test_tracker_over_floor_above_the_limit_exits_1_unless_no_check(capsys):
    overhead = load("overhead")
    overhead.check({"mlp": 1.049, "lenet5": 1.01}, parse(overhead, []))  # under 1.05: returns
    with pytest.raises(SystemExit) as exit_:
        overhead.check({"mlp": 1.06, "lenet5": 1.01}, parse(overhead, []))
    assert exit_.value.code == 1
    assert "mlp 1.060" in capsys.readouterr().err
    overhead.check({"mlp": 1.06}, parse(overhead, ["--no-check"]))
    with pytest.raises(SystemExit):
        overhead.check({"mlp": 1.02}, parse(overhead, ["--limit", "1.01"]))


def test_gpu_benchmark_without_cuda_is_one_message_and_exit_0(monkeypatch, capsys):
    gpu = load("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["gpu.py"])
    gpu.main()  # returns: exit status 0
    assert "no CUDA device" in capsys.readouterr().out
