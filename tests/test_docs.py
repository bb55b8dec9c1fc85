"""Every example in the docs runs, and the docs hold what the tool prints.

The ```python blocks of README.md and docs/*.md run page by page, in order, in one namespace
per page (a later block may use what an earlier one built), in a temporary folder. Two
HTML comments, invisible on the site, steer it:

- `<!-- docs-test: skip REASON -->` on the line before a block: the block is not run. The
  reason is required, and says where the same thing is tested instead.
- `<!-- docs-test: setup NAME -->` anywhere in a page: SETUPS[NAME] runs before the page's
  blocks, for pages whose examples are fragments of a loop the reader already has.

The docstring examples (`>>>`) of the modules the docs own run as doctests.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted(DOCS.rglob("*.md"))]

SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s+(?P<reason>\S.*?)\s*-->")
SETUP = re.compile(r"<!--\s*docs-test:\s*setup\s+(?P<name>[\w-]+)\s*-->")
BLOCK = re.compile(r"^```python[^\n]*\n(?P<code>.*?)^```[ \t]*$", re.S | re.M)

# A small loop's objects, for the pages whose examples are fragments of the reader's loop:
# the Breast Cancer MLP trained two epochs with a tracker, its sites named blocks.0.relu, blocks.1.relu.
LOOP = """
import torch
import torch.nn.functional as F
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler
from torch import nn

import regimes

torch.manual_seed(0)
_x, _y = load_breast_cancer(return_X_y=True)
_x = torch.tensor(StandardScaler().fit_transform(_x), dtype=torch.float32)
x_train, y_train, x_val = _x[:400], torch.tensor(_y[:400]), _x[400:]


class Block(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.linear, self.norm, self.relu, self.dropout = nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU(), nn.Dropout(0.2)

    def forward(self, x):
        return self.dropout(self.relu(self.norm(self.linear(x))))


class MLP(nn.Module):  # the study's Breast Cancer MLP; its sites are blocks.0.relu and blocks.1.relu
    def __init__(self):
        super().__init__()
        self.blocks, self.head = nn.ModuleList([Block(30, 64), Block(64, 32)]), nn.Linear(32, 2)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


model = MLP()
optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
loss_fn = F.cross_entropy
loader = list(zip(x_train.split(32), y_train.split(32)))
batches_per_epoch = len(loader)
probe = x_val[:6]
x, y = loader[0]
tracker = regimes.Tracker(model, probe)
for _epoch in range(2):
    for _xb, _yb in loader:
        optimizer.zero_grad()
        loss_fn(model(_xb), _yb).backward()
        optimizer.step()
        tracker.step()
last = 0
model.eval()
"""

# A finished run where the getting-started page and the run pages read one.
RUN = """
from regimes.experiment import apply_overrides, get_preset, train_run

train_run(apply_overrides(get_preset("mlp-breast-cancer"), ["max_epochs=2"]), "runs/mlp-breast-cancer-seed0",
          device="cpu")
"""

SETUPS = {"loop": LOOP, "run": RUN}


def blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """(line, code, skip reason or None) for each ```python block of the page."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in BLOCK.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.fullmatch(before.strip())
        found.append((text.count("\n", 0, match.start()) + 1, match["code"], skip["reason"] if skip else None))
    return found


def setups(page: Path) -> list[str]:
    return [match["name"] for match in SETUP.finditer(page.read_text(encoding="utf-8"))]


def name(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)], ids=name)
def test_the_pages_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes, writes here
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace = {"__name__": "__docs__"}
    for setup in setups(page):
        assert setup in SETUPS, f"{name(page)}: no setup named {setup!r} (known: {sorted(SETUPS)})"
        exec(compile(SETUPS[setup], f"<setup {setup}>", "exec"), namespace)
    for line, code, skip in blocks(page):
        if skip is not None:
            continue
        try:
            exec(compile(code, f"{name(page)}:{line}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"the example at {name(page)}:{line} raised {error!r}") from error


def test_every_skipped_example_says_why():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in re.finditer(r"<!--\s*docs-test:.*?-->", text):
            assert SKIP.fullmatch(match[0]) or SETUP.fullmatch(match[0]), f"{name(page)}: {match[0]}"
        for line, _, reason in blocks(page):
            assert reason is None or len(reason) > 10, f"{name(page)}:{line}: say why the example does not run"


def test_the_docs_link_no_file_outside_the_repository():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        assert "SPEC.md" not in text, name(page)
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if "://" in target:
                continue
            assert (page.parent / target).resolve().is_relative_to(ROOT), f"{name(page)} links out: {target}"
            assert (page.parent / target).exists(), f"{name(page)} links to a missing file: {target}"


# The modules whose docstrings the docs own (the rest are tested where their owners test them).
# The docstring examples of every module run in tests/test_docstrings.py.


# == What the docs say is what the tool does =====================================================


def table_after(text: str, marker: str) -> list[str]:
    start = text.index("| model ", text.index(marker))
    return list(itertools.takewhile(lambda line: line.startswith("|"), text[start:].splitlines()))


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_the_results_table_is_what_the_tool_prints():
    """The offline presets' table: the tool's header, and only labels the tool prints (no "Breast Cancer (seed 0)")."""
    pytest.importorskip("pyarrow")
    from regimes.report import format_table
    from regimes.study import DATASET_LABELS

    lines = table_after((DOCS / "results.md").read_text(encoding="utf-8"), "The offline presets")
    header = format_table([]).splitlines()[0]
    assert cells(lines[0]) == cells(header)
    for line in lines[2:]:
        row = dict(zip(cells(header), cells(line)))
        assert row["dataset"] in DATASET_LABELS.values() and row["seed"].isdigit() and row["status"] == "finished"


def test_the_docs_say_what_the_tool_does():
    import regimes

    docs = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
    for promise in (
        "`3`",
        "`4`",
        "`130`",
        "batches_per_epoch // k",
        "--resume` takes no `--set`",
        "on 2 cores",
        "HF_HUB_OFFLINE",
    ):
        assert promise in docs, promise
    assert "your training is never interrupted by the tracker" not in docs
    assert regimes.Tracker.step.__doc__ and "All or nothing" in regimes.Tracker.step.__doc__


def test_the_cli_page_names_every_command_and_option():
    from regimes.cli import build_parser

    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    commands = build_parser()._subparsers._group_actions[0].choices
    for command, parser in commands.items():
        assert f"regimes {command}" in page, command
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    assert f"`{option}" in page, f"regimes {command} {option}"


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
