"""Which files make up a source table, and which files in its location are skipped and why.

A table `<t>` is `<t>.<ext>` in the source directory and/or every file under a `<t>/` folder, at any
depth (Hive-style `events/date=2026-01/part-0.parquet` or date-prefixed `events/2026-01-31/…` layouts).
Every file found there is either read or listed as skipped with its reason, so no file is ignored
silently: a file of another type, a marker file (`_SUCCESS`, `.DS_Store`) or a broken symlink is
skipped and named, never a crash. `beton check`, the ingest and its asset metadata use `table_files`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

FORMATS: dict[str, str] = {
    ".parquet": "parquet",
    ".parquet.zst": "parquet",  # PostHog batch exports: a Parquet file with zstd pages, named so
    ".csv": "csv",
    ".csv.gz": "csv",
    ".csv.zst": "csv",
    ".tsv": "tsv",
    ".tsv.gz": "tsv",
    ".tsv.zst": "tsv",
    ".jsonl": "jsonl",
    ".jsonl.gz": "jsonl",
    ".jsonl.zst": "jsonl",
    ".ndjson": "jsonl",
    ".ndjson.gz": "jsonl",
    ".ndjson.zst": "jsonl",
    ".json": "json",
    ".json.gz": "json",
    ".json.zst": "json",
}
"""File name ending → reader. `json` is JSON Lines, a JSON array of objects or pretty-printed objects."""

SUPPORTED = ", ".join(FORMATS)


@dataclass(frozen=True)
class TableFiles:
    """The files of one table: `read` (in load order) and `skipped` as (path, reason) pairs."""

    table: str
    read: tuple[Path, ...] = ()
    skipped: tuple[tuple[Path, str], ...] = field(default_factory=tuple)

    @property
    def skipped_text(self) -> list[str]:
        """`path: reason`, one per skipped file (for metadata and summaries)."""
        return [f"{p}: {reason}" for p, reason in self.skipped]


def file_suffix(path: Path) -> str | None:
    """The supported ending of a file name (longest match, case-insensitive), or None."""
    name = path.name.lower()
    return max((s for s in FORMATS if name.endswith(s)), key=len, default=None)


def file_format(path: Path) -> str:
    """The reader of a supported file: parquet, csv, tsv, jsonl or json."""
    suffix = file_suffix(path)
    if suffix is None:
        raise ValueError(f"{path}: unsupported file type")
    return FORMATS[suffix]


def _skip_reason(path: Path) -> str | None:
    """Why a file in a table's location is not read (None: it is read)."""
    if path.is_symlink() and not path.exists():
        return f"broken symlink (points to {os.readlink(path)}, which does not exist)"
    if path.is_dir():
        return "folder not searched (hidden or marker folder, or a symlink to a folder)"
    if path.name.startswith((".", "_")):
        return "hidden or marker file (name starts with '.' or '_')"
    if not path.is_file():
        return "not a regular file"
    if file_suffix(path) is None:
        return f"unsupported file type (read are: {SUPPORTED})"
    return None


def table_files(source_dir: Path, table: str) -> TableFiles:
    """The files of `table` under `source_dir`: `<table>.<ext>` first, then `<table>/**` sorted by path.

    A top-level `<table>.<other ext>` (e.g. `crm_deals.xlsx`) and every file under `<table>/` that is
    not read are listed in `skipped` with the reason.
    """
    source_dir = Path(source_dir)
    read: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for path in sorted(source_dir.glob(f"{table}.*")):
        if path.is_dir():
            continue
        suffix = file_suffix(path)
        if suffix is not None and path.name[: -len(suffix)] != table:
            continue  # e.g. "events.v2.csv" is not this table
        if suffix is None and path.name.split(".")[0] != table:
            continue
        reason = _skip_reason(path)
        (skipped.append((path, reason)) if reason else read.append(path))
    folder = source_dir / table
    if folder.is_dir():
        for root, dirs, names in os.walk(folder, followlinks=False):
            hidden = sorted(d for d in dirs if d.startswith((".", "_")) or os.path.islink(os.path.join(root, d)))
            dirs[:] = sorted(d for d in dirs if d not in hidden)
            for name in sorted(names) + hidden:
                path = Path(root) / name
                reason = _skip_reason(path)
                (skipped.append((path, reason)) if reason else read.append(path))
    return TableFiles(table=table, read=tuple(read), skipped=tuple(skipped))
