"""Atomic writers for every stage output (metrics JSON, plot CSV, arrays) and a checked .npz reader.

Everything is written to a temporary name in the target folder and renamed, so a killed run never leaves a
half-written file and an existing file survives a failure.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """A missing, truncated or malformed data file; the message names it."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp{suffix}"):  # left by a writer killed mid-write
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _clean(value):
    """JSON-ready copy: numpy scalars to Python, floats rounded to 6 significant digits, NaN to None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_clean(v) for v in value.tolist()]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if not math.isfinite(value):
            return None
        return float(f"{value:.6g}")
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_json(path, data: dict) -> None:
    """Metrics JSON: sorted keys, rounded floats, so identical results give identical bytes."""
    write_text(path, json.dumps(_clean(data), indent=2, sort_keys=True) + "\n")


def write_csv(path, rows: list[dict], columns: list[str] | None = None) -> None:
    """Plot CSV with a header; floats rounded like the JSON; text cells with commas, quotes or line breaks quoted
    (csv.QUOTE_MINIMAL: every other cell is written as before)."""
    if not rows:
        raise ValueError(f"{path}: no rows to write")
    columns = columns or list(rows[0])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if (v := _clean(row.get(col))) is None else str(v) for col in columns])
    write_text(path, out.getvalue())


def save_npz(path, **arrays) -> None:
    """np.savez to a temporary name, then rename (the .npz suffix stops numpy adding its own)."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, allow_pickle=False, **arrays)


def load_npz(path, required: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Load every array of an .npz (never pickles); a missing, truncated or incomplete file is a DataError."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found (run `dvc repro` or `dvc pull` to create it)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise DataError(f"{path}: corrupted or truncated .npz ({err}); delete it and rerun `dvc repro`") from None
    missing = [k for k in required if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing arrays {', '.join(missing)}")
    return arrays
