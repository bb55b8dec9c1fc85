"""Where outside data sets come from: local directories first, then the Hugging Face hub.

Nothing here downloads files itself. A data set is read from the first local
directory that holds all its files; failing that, from the hub through the
optional ``datasets`` library; failing that, :class:`DataNotFoundError` says
where it looked and how to get the files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from regimes.errors import RegimesError
from regimes.extras import MissingExtraError, require

DATA_ENV_VAR = "REGIMES_DATA"
T = TypeVar("T")


class DataNotFoundError(RegimesError, FileNotFoundError):
    """A data set is neither on disk nor on the hub; the message says where we looked
    and how to get it."""


def search_roots(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Root directories to search, in order: ``data_dir``, ``$REGIMES_DATA``, ``~/.cache/regimes``."""
    roots = []
    if data_dir is not None:
        roots.append(Path(data_dir).expanduser())
    if os.environ.get(DATA_ENV_VAR):
        roots.append(Path(os.environ[DATA_ENV_VAR]).expanduser())
    roots.append(Path.home() / ".cache" / "regimes")
    return list(dict.fromkeys(roots))  # drop repeats, keep order


def find_local(
    name: str,
    folders: Sequence[str],
    required: Sequence[str],
    data_dir: str | os.PathLike | None = None,
    system_dirs: Sequence[str] = (),
) -> tuple[Path | None, list[Path]]:
    """The first directory holding every ``required`` file, and all directories looked at.

    Under each root the candidates are ``<root>/<name>``, ``<root>/<name>/<folder>``
    and ``<root>/<folder>`` for each published folder name; then ``system_dirs``, where a
    system package installs the data (Debian's dataset-fashion-mnist, say). A required
    file also counts as present when only its gzipped version (``.gz``) is there.
    """
    searched: list[Path] = []
    roots = [
        [root / name, *(root / name / f for f in folders), *(root / f for f in folders)]
        for root in search_roots(data_dir)
    ]
    for candidates in [*roots, [Path(d) for d in system_dirs]]:
        for directory in candidates:
            if directory in searched:
                continue
            searched.append(directory)
            if all(_exists_maybe_gzipped(directory / f) for f in required):
                return directory, searched
    return None, searched


def _exists_maybe_gzipped(path: Path) -> bool:
    return path.is_file() or path.with_name(path.name + ".gz").is_file()


def load_from_hub(hub_id: str, convert: Callable[[object], T], config: str | None = None) -> tuple[T | None, str]:
    """Try the Hugging Face hub: ``(convert(dataset_dict), note)`` or ``(None, why not)``.

    Never raises: no ``datasets`` library, no network, an unknown id or a
    changed schema all fall through to :class:`DataNotFoundError`, whose
    message carries the note.
    """
    try:
        datasets = require("datasets", "the Hugging Face hub")
    except MissingExtraError as error:
        return None, f"Hugging Face hub id {hub_id!r} was not tried: {error}."
    if not hub_offline() and (unreachable := hub_unreachable()) is not None:
        # `datasets` would retry for half a minute; offline mode reads only its own cache.
        return None, (
            f"Hugging Face hub id {hub_id!r} was not tried: the hub cannot be reached ({unreachable}). "
            "With HF_HUB_OFFLINE=1, a copy in the `datasets` cache is used."
        )
    try:
        name = hub_id if config is None else f"{hub_id} ({config})"
        table = datasets.load_dataset(hub_id) if config is None else datasets.load_dataset(hub_id, config)
        return convert(table), f"hub: {name}"
    except Exception as error:  # any failure here means "not available", see docstring
        return None, f"Hugging Face hub id {hub_id!r} failed: {type(error).__name__}: {error}"


def hub_offline() -> bool:
    """True when the environment puts the Hugging Face libraries offline (HF_HUB_OFFLINE and
    the older HF_DATASETS_OFFLINE / TRANSFORMERS_OFFLINE): `datasets` then reads its cache only."""
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE") for name in names)


def hub_unreachable(timeout: float = 1.5) -> str | None:
    """Why the hub (or the HTTPS proxy in front of it) cannot be reached, or None when a TCP
    connection to it opens within `timeout` seconds (name lookup included)."""
    import socket
    import threading
    from urllib.parse import urlsplit

    proxy = next(
        (os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy") if os.environ.get(k)), None
    )
    url = urlsplit(proxy or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    if not url.hostname:
        return None  # an address we cannot read: let the library try it
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(f"{host}:{port}: {error.strerror or error}")

    worker = threading.Thread(target=connect, daemon=True)  # a name lookup has no timeout of its own
    worker.start()
    worker.join(timeout)
    return outcome[0] if outcome else f"{host}:{port}: no answer in {timeout:g} s"


def fetch(
    name: str,
    data_dir: str | os.PathLike | None,
    *,
    folders: Sequence[str],
    required: Sequence[str],
    read_local: Callable[[Path], T],
    how_to_get: str,
    hub_id: str | None = None,
    read_hub: Callable[[object], T] | None = None,
    hub_config: str | None = None,
    system_dirs: Sequence[str] = (),
) -> tuple[T, str]:
    """Read a data set from the first place that has it: ``(data, source)``.

    ``read_local(directory)`` reads the published files; ``read_hub(dataset_dict)``
    converts the hub copy, if the data set has one (``hub_id``, with its
    configuration name ``hub_config`` where it has several).
    """
    directory, searched = find_local(name, folders, required, data_dir, system_dirs)
    if directory is not None:
        return read_local(directory), f"local: {directory}"
    if hub_id is None:
        hub_note = "This data set is not taken from the Hugging Face hub; only local files are used."
    else:
        data, hub_note = load_from_hub(hub_id, read_hub, hub_config)
        if data is not None:
            return data, hub_note
    raise DataNotFoundError(_not_found_message(name, searched, required, hub_note, how_to_get))


def _not_found_message(name, searched, required, hub_note, how_to_get) -> str:
    lines = [f"Data set {name!r} was not found.", f"Looked for {', '.join(required)} in:"]
    for directory in searched:
        note = "  (exists, but files are missing)" if directory.is_dir() else ""
        lines.append(f"  {directory}{note}")
    lines += [
        hub_note,
        f"To get it: {how_to_get}",
        f"Put it under a directory named by --data-dir (data_dir=...) or ${DATA_ENV_VAR}, or under ~/.cache/regimes.",
    ]
    return "\n".join(lines)
