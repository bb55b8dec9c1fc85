"""A tracker's records in memory: named float64 columns by iteration, appended in chunks
at each read-back and read whole or from an iteration on (incremental readers: the run
writer, a logger, an online detector each keep their own position)."""

from __future__ import annotations

import numpy as np

__all__ = ["History"]


class History:
    def __init__(self, columns: list[str]):
        self.columns = list(columns)
        self._iterations: list[np.ndarray] = []
        self._chunks: dict[str, list[np.ndarray]] = {name: [] for name in self.columns}

    def append(self, iterations: np.ndarray, values: dict[str, np.ndarray]) -> None:
        self._iterations.append(np.asarray(iterations, dtype=np.int64))
        for name in self.columns:
            self._chunks[name].append(np.asarray(values[name], dtype=np.float64))

    def _joined(self, chunks: list[np.ndarray], dtype) -> np.ndarray:
        if len(chunks) > 1:  # join once, so later reads are one array
            chunks[:] = [np.concatenate(chunks)]
        return chunks[0] if chunks else np.empty(0, dtype=dtype)

    @property
    def iterations(self) -> np.ndarray:
        return self._joined(self._iterations, np.int64)

    def column(self, name: str) -> np.ndarray:
        if name not in self._chunks:
            raise KeyError(f"no record named {name!r}; the records are {self.columns}")
        return self._joined(self._chunks[name], np.float64)

    def read(self, since: int = 0, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """`iteration` and the named columns (all by default) for the records after iteration `since`; copies."""
        iterations = self.iterations
        first = int(np.searchsorted(iterations, since, side="right"))
        out = {"iteration": iterations[first:].copy()}
        for name in self.columns if names is None else names:
            out[name] = self.column(name)[first:].copy()
        return out

    def __len__(self) -> int:
        return sum(len(c) for c in self._iterations)
