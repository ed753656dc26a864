"""Read a source directory into the warehouse: validate every row, load the good ones, quarantine the rest.

For each contract table (`contract.TABLES`) the files are read as text by DuckDB (Parquet, CSV, TSV,
JSON Lines or JSON, gzip'd, zstd'd or not, one file or a folder of parts at any depth; every other file
in the table's location is listed as skipped with its reason: `files.table_files`), every row is
checked in one SQL pass, and:

* valid rows are loaded, typed, into `raw.raw_<table>` (replacing the table at the end, in one
  transaction, with its quarantine rows: ingest is idempotent, and a run that fails changes nothing);
* rows that break a rule go to `beton.quarantine` with the raw row (JSON text) and every reason;
* rows identical in every contract column to an earlier row are dropped and counted.

The invariant, checked by an asset check: rows read = rows loaded + rows quarantined + exact duplicates.
A missing required table or column, a file DuckDB cannot read (corrupt gzip, a record over
`MAX_LINE_BYTES`), a file whose bytes are not what its name says, a title row above a CSV header, or
amounts written in major units are not row problems: they raise `SourceError` naming the file (and
the column) and what to change. A reference to a row missing from the referenced table (a dangling
reference, `Column.references`) is a row problem: quarantined with the value.
Records the CSV reader rejects (wrong number of fields, invalid UTF-8) are quarantined like bad rows.

How the rows are checked (`ingest_table`): the files are read in (path) order, in chunks of consecutive
files of at most `ingest.max_chunk_bytes` on disk (`file_chunks`). Each chunk is read as text, its text
values typed once (the timestamp parsed once, a JSON value validated and minified), every reason computed
on those, and the raw row (JSON text) built for the rejected rows only; then its rows are appended to
the raw table and its rejects to the quarantine, and its temp tables dropped. The rules read across the
whole table in (file, line) order, whatever the chunking: an exact duplicate or a repeated key of a row
in an earlier chunk is found through that chunk's 128-bit row and key hashes (`_SeenRows`: integers
only), so the result is the same for any chunk size, up to a 128-bit hash collision. The raw table is
not sorted: `_source_file` and `_line_number` say where each row came from, and nothing downstream
reads rows in physical order.

Incremental (`ingest_table(..., incremental=True)`, the setting `ingest.incremental`): the ingest also keeps,
in schema `STATE_SCHEMA` (`ingest_files`: one row per contract table, the files read with their stamps and the
running totals, as JSON; `ingest_rows__<table>`, `ingest_keys__<table>`: 16 bytes each per row), the files it read (each with its `file_stamp`), its running totals and the row and key
hashes, and the next ingest reads only the files added since, as the next chunks of the same load, when
`plan_ingest` finds that this gives the same table as reading every file again; otherwise every file.

Memory: the ingest runs within the caller's connection, so its `memory_limit` bounds it and its
`temp_directory` takes what spills (DuckDB's defaults: 80% of RAM, `<warehouse>.tmp`). What DuckDB holds
at a time is one chunk's text and typed rows, plus the hashes of the earlier chunks: 16 bytes per row
kept (every row but the exact duplicates) and 16 per row loaded. Measured: README, "Performance"
(`benchmarks/ingest_table.py`).

`measure_freshness` says how far each loaded table's newest row trails the as-of time (the latest
event, never the wall clock); the ingest asset checks fail on a stale or empty source.
"""

from __future__ import annotations

import hashlib
import json
import sys
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import duckdb
import pycountry

from beton_pipeline.sources import contract as _contract_module
from beton_pipeline.sources import files as _files_module
from beton_pipeline.sources.contract import MIN_TIMESTAMP, TABLES_BY_NAME, Column, TableSpec
from beton_pipeline.sources.files import SUPPORTED, TableFiles, file_format, file_suffix, table_files
from beton_pipeline.warehouse import STATE_SCHEMA, table_exists, transaction

MAX_JSON_CHARS = 1_000_000
"""A JSON value longer than this (1 MB of text) is quarantined: no real event property needs it."""

MAX_LINE_BYTES = 64 * 1024 * 1024
"""The longest CSV or JSON Lines record read (DuckDB's default is 2 MB), so that an oversized JSON
value is quarantined with its own reason instead of stopping the run. A longer JSON Lines record is
quarantined as unreadable; a longer CSV record stops the run with an error naming the file when it
falls in the part DuckDB samples to detect the dialect, and is quarantined otherwise."""

CSV_BUFFER_BYTES = MAX_LINE_BYTES
"""The CSV reader's buffer. DuckDB's default is 16 × `max_line_size`: a 1 GiB allocation for every compressed
CSV file read, which a bounded `memory_limit` (`warehouse.MEMORY_LIMIT`) either refuses or spends on one
buffer. One maximum line is all a buffer must hold."""

MAX_CHUNK_BYTES = 256 * 1024 * 1024
"""The default of `ingest.max_chunk_bytes`: a table's files are read in chunks of consecutive files of at
most this many bytes on disk (a larger file is a chunk of its own), so that DuckDB holds one chunk's rows
as text and typed at a time, not the whole table's (`ingest_table`)."""

MAX_EPOCH_SECONDS = 1e11
"""Epoch values at or above this (the year 5138) are not seconds: usually milliseconds, which the
contract does not accept (the value is ambiguous), so the row is quarantined saying so."""

_INTEGER_PATTERN = "[+-]?[0-9]{1,18}(\\.0*)?"
"""An integer, optionally with a zero fraction ("4900.0"); at most 18 digits so it fits a BIGINT."""

NULL_MARKERS = ["", "NULL", "\\N"]
"""Field values a CSV or TSV file means as null: empty, and the markers warehouse exports write."""

HEADER_SEARCH_LINES = 20
"""When a CSV's first line lacks the contract columns, this many lines are searched for the real header."""

_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"PAR1": "Parquet"}
"""The first bytes of a compressed or Parquet file."""

_ISO_CURRENCIES = tuple(sorted(c.alpha_3.lower() for c in pycountry.currencies))

QUARANTINE_DDL = """
create schema if not exists beton;
create table if not exists beton.quarantine (
    source_table varchar not null,
    source_file varchar,
    line_number bigint,
    raw_row varchar,
    reason varchar not null,
    ingested_at timestamp not null
);
"""


class SourceError(ValueError):
    """The source directory cannot be read as the contract says; the message names the file and column."""


@dataclass(frozen=True)
class IngestResult:
    """What one table's ingest did. `rows_read = rows_loaded + rows_quarantined + exact_duplicates_dropped`."""

    table: str
    files: tuple[str, ...]
    rows_read: int
    rows_loaded: int
    rows_quarantined: int
    exact_duplicates_dropped: int
    ignored_columns: tuple[str, ...] = ()
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    skipped_files: tuple[str, ...] = ()
    """`path: reason` for every file in the table's location that was not read (`files.table_files`)."""
    unchecked_references: tuple[str, ...] = ()
    """Reference columns not checked because the referenced table was not loaded (e.g. `customer → billing_customers.id`)."""
    mode: str = "full"
    """How the table was ingested (`INGEST_MODES`); `mode_reason` says why."""
    mode_reason: str = ""
    files_read: tuple[str, ...] = ()
    """The files read by this ingest: all of `files` (full), the new ones (incremental) or none (unchanged)."""

    @property
    def quarantined_share(self) -> float:
        """Quarantined rows / rows read (0 when nothing was read)."""
        return self.rows_quarantined / self.rows_read if self.rows_read else 0.0

    @property
    def accounted(self) -> int:
        """Rows loaded, quarantined or dropped as exact duplicates."""
        return self.rows_loaded + self.rows_quarantined + self.exact_duplicates_dropped

    @property
    def balanced(self) -> bool:
        return self.rows_read == self.accounted


def find_table_files(source_dir: Path, table: str) -> list[Path]:
    """The files read for one table (`files.table_files`, which also lists the skipped ones)."""
    return list(table_files(source_dir, table).read)


def _scalar(con: duckdb.DuckDBPyConnection, query: str):
    """The single value a query returns."""
    return con.sql(query).fetchall()[0][0]


def _q(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _is_epoch(v: str) -> str:
    """SQL: whether the text is a plain number (epoch seconds, integer or decimal)."""
    return f"regexp_full_match(trim({v}), '[+-]?[0-9]+(\\.[0-9]+)?')"


def _timestamp_from(v: str, is_epoch: str, number: str) -> str:
    """Text → TIMESTAMP (UTC), given SQL for whether the text is epoch seconds and for the text as a number.
    Epoch seconds (integer or decimal) or ISO-8601 with or without zone (none = UTC)."""
    return (
        f"(case when {is_epoch} "
        f"then (case when abs({number}) < {MAX_EPOCH_SECONDS:g} then to_timestamp({number})::timestamp end) "
        f"else try_cast(trim({v}) as timestamptz)::timestamp end)"
    )


def _timestamp_expr(v: str) -> str:
    """Text → TIMESTAMP (UTC) in one expression (`_timestamp_from`)."""
    return _timestamp_from(v, _is_epoch(v), f"try_cast(trim({v}) as double)")


def _future_reason(column: str) -> str:
    """The quarantine reason of a timestamp more than a day ahead of the clock (`_column_sql`, `_future_due`)."""
    return f"{column}: in the future"


def _present(v: str) -> str:
    return f"(nullif(trim({v}), '') is not null)"


@dataclass(frozen=True)
class _ColumnSql:
    """One contract column's part of the one-pass check over the text table.

    Values derived from the text are computed once, in two stages (`first` on the text value, `second`
    on the first stage's values; each an (alias, SQL) pair), and both the reasons (SQL, each NULL or a
    reason text) and the typed value (the column's warehouse type, used for the rows that pass) are
    written on them: the timestamp is parsed once, a JSON value parsed twice (validated, minified).
    """

    first: tuple[tuple[str, str], ...]
    second: tuple[tuple[str, str], ...]
    reasons: tuple[str, ...]
    typed: str


def _column_sql(i: int, col: Column) -> _ColumnSql:
    """The `_ColumnSql` of contract column number `i` (its aliases are `_p<i>`, `_t<i>`, …)."""
    v, name = _q(col.name), col.name
    p, d, t, ok, j, low = (f"_{x}{i}" for x in ("p", "d", "t", "ok", "j", "l"))
    first: list[tuple[str, str]] = [(p, _present(v))]
    second: list[tuple[str, str]] = []
    reasons: list[str] = []
    typed = f"nullif({v}, '')"
    if col.kind in ("timestamp", "number") or (col.min_value is not None and col.kind == "integer"):
        first.append((d, f"try_cast(trim({v}) as double)"))
    if col.kind == "currency" or col.allowed is not None or col.lower:
        first.append((low, f"lower(trim({v}))"))
        typed = f"nullif({low}, '')"
    if col.not_null:
        reasons.append(f"case when not {p} then '{name} is empty' end")
    if col.kind == "timestamp":
        first.append((f"_e{i}", _is_epoch(v)))
        second.append((t, _timestamp_from(v, f"_e{i}", d)))
        reasons.append(
            f"case when {p} and _e{i} and {t} is null "
            f"then '{name}: epoch value too large for seconds (milliseconds?): ' || left(trim({v}), 40) "
            f"when {p} and {t} is null then '{name}: not a timestamp: ' || left({v}, 40) "
            f"when {t} < timestamp '{MIN_TIMESTAMP}' then '{name}: before {MIN_TIMESTAMP}' "
            + (
                ""
                if col.may_be_future
                else f"when {t} > current_timestamp::timestamp + interval 1 day then {_lit(_future_reason(name))} "
            )
            + "end"
        )
        typed = t
    elif col.kind == "integer":
        # "4900.0" is an integer written by a float column (pandas writes integers with nulls that way).
        first.append((ok, f"regexp_full_match(trim({v}), '{_INTEGER_PATTERN}')"))
        reasons.append(f"case when {p} and not {ok} then '{name}: not an integer: ' || left({v}, 40) end")
        typed = f"(case when {ok} then cast(regexp_replace(trim({v}), '\\.0*$', '') as bigint) end)"
    elif col.kind == "number":
        reasons.append(
            f"case when {p} and ({d} is null or not isfinite({d})) then '{name}: not a number: ' || left({v}, 40) end"
        )
        typed = d
    elif col.kind == "json":
        # Minified, canonical text; NULL when empty, too long or not JSON. An object starts with "{".
        second.append(
            (
                j,
                f"(case when {p} and length({v}) <= {MAX_JSON_CHARS} and json_valid({v}) then json(trim({v}))::varchar end)",
            )
        )
        reasons.append(
            f"case when {p} and length({v}) > {MAX_JSON_CHARS} then '{name}: JSON larger than {MAX_JSON_CHARS} characters' "
            f"when {p} and {j} is null then '{name}: malformed JSON' "
            f"when {p} and not (starts_with({j}, '{{') or {j} = 'null') then '{name}: not a JSON object' end"
        )
        typed = j
    elif col.kind == "currency":
        allowed = ", ".join(_lit(c) for c in _ISO_CURRENCIES)
        reasons.append(
            f"case when {p} and {low} not in ({allowed}) then '{name}: unknown currency ' || left({v}, 12) end"
        )
    if col.min_value is not None and col.kind in ("integer", "number"):
        reasons.append(f"case when {p} and {d} < {col.min_value} then '{name}: below {col.min_value:g}' end")
    if col.allowed is not None:
        allowed = ", ".join(_lit(a) for a in col.allowed)
        reasons.append(
            f"case when {p} and {low} not in ({allowed}) then '{name}: unexpected value ' || left({v}, 40) end"
        )
    return _ColumnSql(tuple(first), tuple(second), tuple(reasons), typed)


def _raw_table_ddl(spec: TableSpec, name: str) -> str:
    """`create or replace table <name>` with the columns of `spec.raw_table`."""
    types = {"timestamp": "timestamp", "integer": "bigint", "number": "double"}
    cols = ", ".join(f"{_q(c.name)} {types.get(c.kind, 'varchar')}" for c in spec.columns)
    return f"create or replace table {name} ({cols}, _source_file varchar, _line_number bigint)"


def _unreadable(path: Path, what: str, exc: duckdb.Error) -> SourceError:
    """A `SourceError` for a file DuckDB cannot read, with DuckDB's most telling line (not its dump of options)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    detail = next((ln for ln in lines if "Maximum line size" in ln), lines[0] if lines else type(exc).__name__)
    for where in (f": {path}", f" '{path}'", f' "{path}"', f" {path}"):
        detail = detail.replace(where, "")
    detail = detail.split(". Actual Size")[0]
    for prefix in ("IO Error: ", "Invalid Input Error: ", "Conversion Error: "):
        detail = detail.removeprefix(prefix)
    if "gzip" in detail.lower():
        detail = f"truncated or corrupt gzip ({detail})"
    return SourceError(f"{path}: not a readable {what} file: {detail}")


_CSV_ERROR_REASONS = """
    case error_type
        when 'TOO MANY COLUMNS' then regexp_extract(error_message, 'Found: ([0-9]+)', 1) || ' fields, the header has '
            || regexp_extract(error_message, 'Expected Number of Columns: ([0-9]+)', 1)
        when 'MISSING COLUMNS' then regexp_extract(error_message, 'Found: ([0-9]+)', 1) || ' field(s), the header has '
            || regexp_extract(error_message, 'Expected Number of Columns: ([0-9]+)', 1)
        when 'INVALID ENCODING' then 'not valid UTF-8'
        when 'UNQUOTED VALUE' then 'a quote inside an unquoted value'
        when 'LINE SIZE OVER MAXIMUM' then 'longer than {max_line_bytes} bytes'
        else lower(error_type) || ': ' || error_message
    end
"""
"""DuckDB's CSV reject (one row per error) → the reason text of the line, stable and short."""


_JSON_KIND_NAME = (
    "case kind when 'ARRAY' then 'array' when 'VARCHAR' then 'string' when 'NULL' then 'null' "
    "when 'BOOLEAN' then 'boolean' else 'number' end"
)
"""DuckDB's `json_type` of a valid JSON line that is not an object → the JSON name of its kind."""


class _TextLoader:
    """Reads one table's files into a temp table of text columns plus `_file`, `_line`.

    Records DuckDB's reader rejects (wrong number of fields, bad encoding) go to the reject table, one
    row per record, with `_line` the record's number in the file (the header is line 1 of a CSV).
    `file_columns` holds, per file read, the contract columns it has: a rejected row's raw JSON holds
    those (`raw_row_sql`), and is built for the rejected rows only.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, spec: TableSpec, text_table: str, reject_table: str):
        self.con, self.spec, self.text_table, self.reject_table = con, spec, text_table, reject_table
        self.extra_columns: set[str] = set()
        self.file_columns: dict[str, tuple[str, ...]] = {}
        cols = ", ".join(f"{_q(c)} varchar" for c in spec.column_names)
        con.execute(f"create or replace temp table {text_table} ({cols}, _file varchar, _line bigint)")
        con.execute(
            f"create or replace temp table {reject_table} (_file varchar, _line bigint, _raw varchar, reason varchar)"
        )

    def _check_columns(self, path: Path, present: list[str], absent_is_null: bool = False) -> None:
        missing = [
            c.name
            for c in self.spec.columns
            if c.required and c.name not in present and (c.not_null or not absent_is_null)
        ]
        if missing:
            raise SourceError(f"{path}: missing required column(s) {', '.join(missing)} for table '{self.spec.name}'")
        self.extra_columns |= set(present) - set(self.spec.column_names)

    def _insert(self, path: Path, select_cols: dict[str, str], from_clause: str, line_expr: str) -> None:
        names = self.spec.column_names
        cols = ", ".join(select_cols.get(c, "null") for c in names)
        self.file_columns[str(path)] = tuple(c for c in names if c in select_cols)
        self.con.execute(
            f"insert into {self.text_table} select {cols}, {_lit(str(path))}, {line_expr} from {from_clause}"
        )

    def raw_row_sql(self) -> str:
        """SQL over the text table: a row as read, as JSON text of the columns its file has (in contract
        order, null values included), e.g. `{"uuid":"u1","event":"signup","timestamp":null}`."""
        files_by_columns: dict[tuple[str, ...], list[str]] = {}
        for file, columns in self.file_columns.items():
            if columns:  # a file without columns has no rows
                files_by_columns.setdefault(columns, []).append(file)
        objects = {
            columns: "json_object(" + ", ".join(f"{_lit(c)}, {_q(c)}" for c in columns) + ")::varchar"
            for columns in files_by_columns
        }
        if len(objects) <= 1:
            return next(iter(objects.values()), "null")
        whens = " ".join(
            f"when _file in ({', '.join(_lit(f) for f in files)}) then {objects[columns]}"
            for columns, files in files_by_columns.items()
        )
        return f"(case {whens} end)"

    def load(self, path: Path) -> None:
        if path.stat().st_size == 0:
            raise SourceError(f"{path}: file is empty (0 bytes); remove it or write at least a header row")
        _check_magic(path)
        fmt = file_format(path)
        if fmt == "parquet":
            self._load_parquet(path)
        elif fmt in ("csv", "tsv"):
            self._load_csv(path, "\t" if fmt == "tsv" else None)
        else:
            layout = self._json_layout(path)
            if layout == "lines":
                self._load_jsonl(path)
            else:
                self._load_json_records(path, layout)

    def _find_misplaced_header(self, path: Path, delim: str, present: list[str]) -> None:
        """A title row above the header (or a file that is not this table): raise naming where the header is."""
        required = [c.name for c in self.spec.columns if c.required]
        src = (
            f"read_csv({_lit(str(path))}, columns={{'line': 'VARCHAR'}}, header=false, delim='\\x1f', "
            f"quote='', escape='', auto_detect=false, strict_mode=false, ignore_errors=true, max_line_size={MAX_LINE_BYTES}, buffer_size={CSV_BUFFER_BYTES})"
        )
        try:
            lines = [r[0] or "" for r in self.con.sql(f"select line from {src} limit {HEADER_SEARCH_LINES}").fetchall()]
        except duckdb.Error:
            return
        for number, line in enumerate(lines, start=1):
            fields = {f.strip().strip('"').strip() for f in line.lstrip("\ufeff").split(delim)}
            if number > 1 and all(name in fields for name in required):
                raise SourceError(
                    f"{path}: line 1 is not the header row ({lines[0][:60]!r}); the header with the contract columns "
                    f"is on line {number}: remove the {number - 1} line(s) above it (a title row) and export again"
                )
        if len(present) == 1 and lines:
            raise SourceError(
                f"{path}: the header {lines[0][:60]!r} does not hold the columns of table '{self.spec.name}' "
                f"(expected a {'tab' if delim == chr(9) else 'comma'}-separated header with {', '.join(required)})"
            )

    def _json_layout(self, path: Path) -> str:
        """How a JSON file holds its records: `lines` (JSON Lines), `array` (one JSON array of objects)
        or `unstructured` (pretty-printed objects, one after another), from its first non-blank line."""
        src = (
            f"read_csv({_lit(str(path))}, columns={{'line': 'VARCHAR'}}, header=false, delim='\\x1f', "
            f"quote='', escape='', auto_detect=false, strict_mode=false, ignore_errors=true, max_line_size={MAX_LINE_BYTES}, buffer_size={CSV_BUFFER_BYTES})"
        )
        try:
            rows = self.con.sql(
                f"select trim(line), json_valid(trim(line)), count(*) over () from {src} where trim(line) <> '' limit 1"
            ).fetchall()
        except duckdb.Error as exc:
            raise _unreadable(path, "JSON Lines", exc) from None
        if not rows:
            return "lines"
        first, valid, _ = rows[0]
        if first in ("[", "{") or (first.startswith("[") and not valid):
            return "array" if first.startswith("[") else "unstructured"
        if first.startswith("[") and valid:
            # One line holding a whole array of objects (`json.dump(records)`), not JSON Lines of arrays.
            lines = _scalar(self.con, f"select count(*) from {src} where trim(line) <> ''")
            if lines == 1 and _scalar(self.con, f"select json_type({_lit(first)}::json, '$[0]')") == "OBJECT":
                return "array"
        return "lines"

    def _load_json_records(self, path: Path, layout: str) -> None:
        """A JSON array of objects, or pretty-printed objects: one record per object (not per line);
        `line_number` is then the record's number in the file."""
        src = f"read_json_objects({_lit(str(path))}, format={_lit(layout)}, maximum_object_size={MAX_LINE_BYTES})"
        try:
            self.con.execute(
                f"create or replace temp table _beton_objs as select json as j, row_number() over () as _line from {src}"
            )
        except duckdb.Error as exc:
            raise _unreadable(path, "JSON array" if layout == "array" else "JSON", exc) from None
        self.con.execute(
            f"insert into {self.reject_table} select {_lit(str(path))}, _line, json_object('record', j)::varchar, "
            f"'JSON record is not an object (' || {_JSON_KIND_NAME.replace('kind', 'json_type(j)')} || ')' "
            f"from _beton_objs where json_type(j) <> 'OBJECT'"
        )
        self.con.execute("delete from _beton_objs where json_type(j) <> 'OBJECT'")
        self._insert_objects(path)
        self.con.execute("drop table _beton_objs")

    def _load_parquet(self, path: Path) -> None:
        src = f"read_parquet({_lit(str(path))})"
        try:
            described = self.con.sql(f"describe select * from {src}").fetchall()
        except duckdb.Error as exc:
            raise _unreadable(path, "Parquet", exc) from None
        types = {name: typ for name, typ, *_ in described}
        self._check_columns(path, list(types))
        select = {}
        for c in self.spec.column_names:
            if c in types:
                nested = any(t in types[c].upper() for t in ("STRUCT", "MAP", "[]", "JSON", "UNION"))
                select[c] = f"to_json({_q(c)})::varchar" if nested else f"cast({_q(c)} as varchar)"
        try:
            self._insert(path, select, f"(select *, row_number() over () as _rn from {src})", "_rn")
        except duckdb.Error as exc:
            raise _unreadable(path, "Parquet", exc) from None

    def _read_with_rejects(self, path: Path, what: str, src: str, table: str) -> None:
        """`create temp table <table> as select *, _rn from <src>` (a `read_csv` with `store_rejects`)."""
        self.con.execute("drop table if exists _beton_rej_err; drop table if exists _beton_rej_scan")
        try:
            self.con.execute(
                f"create or replace temp table {table} as select *, row_number() over () as _rn from {src}"
            )
        except duckdb.Error as exc:
            raise _unreadable(path, what, exc) from None
        # One reject per record: DuckDB writes one per missing field. `_s` is the record's number among
        # the data records (the header excluded), `_k` its rank among the rejects.
        self.con.execute(
            f"""
            create or replace temp table _beton_rej as
            select line, line - {1 if what in ("CSV", "TSV") else 0} as _s, csv_line, reason,
                   row_number() over (order by line) as _k
            from (
                select line, csv_line, {_CSV_ERROR_REASONS.format(max_line_bytes=MAX_LINE_BYTES)} as reason,
                       row_number() over (partition by line order by column_idx, byte_position) as _first
                from _beton_rej_err
            ) where _first = 1
            """
        )

    def _numbered(self, table: str) -> str:
        """`table` with `_rec`, the data-record number of accepted record `_rn`. DuckDB numbers accepted
        records only, so each rejected record before it moves it down one: accepted record k follows
        reject i iff s_i - i < k, and s_i - i never decreases, so an as-of join on it finds the count."""
        return (
            f"(select t.*, t._rn + coalesce(r.n, 0) as _rec from {table} t "
            f"asof left join (select _s - _k as below, max(_k) as n from _beton_rej group by 1) r on t._rn > r.below)"
        )

    def _load_csv(self, path: Path, delim: str | None = None) -> None:
        # NULL and \N (warehouse exports) and empty fields are nulls, never the text "NULL".
        src = (
            f"read_csv({_lit(str(path))}, all_varchar=true, header=true, store_rejects=true, "
            f"nullstr=[{', '.join(_lit(m) for m in NULL_MARKERS)}], {'' if delim is None else f'delim={_lit(delim)}, '}"
            f"rejects_table='_beton_rej_err', rejects_scan='_beton_rej_scan', max_line_size={MAX_LINE_BYTES}, buffer_size={CSV_BUFFER_BYTES})"
        )
        what = "TSV" if delim == "\t" else "CSV"
        self._read_with_rejects(path, what, src, "_beton_csv")
        present = [r[0] for r in self.con.sql("describe _beton_csv").fetchall() if r[0] != "_rn"]
        if any(c.required and c.name not in present for c in self.spec.columns):
            self._find_misplaced_header(path, delim or ",", present)
        self._check_columns(path, present)
        select = {c: _q(c) for c in self.spec.column_names if c in present}
        self.con.execute(
            f"insert into {self.reject_table} select {_lit(str(path))}, line, json_object('line', csv_line)::varchar, "
            f"'unreadable {what} line: ' || reason from _beton_rej"
        )
        self._insert(path, select, self._numbered("_beton_csv"), "_rec + 1")
        self.con.execute("drop table _beton_csv; drop table _beton_rej")

    def _load_jsonl(self, path: Path) -> None:
        # Each line as one text value: a delimiter and no quote that never occur in JSON text.
        src = (
            f"read_csv({_lit(str(path))}, columns={{'line': 'VARCHAR'}}, header=false, delim='\\x1f', "
            f"quote='', escape='', auto_detect=false, strict_mode=false, store_rejects=true, "
            f"rejects_table='_beton_rej_err', rejects_scan='_beton_rej_scan', max_line_size={MAX_LINE_BYTES}, buffer_size={CSV_BUFFER_BYTES})"
        )
        self._read_with_rejects(path, "JSON Lines", src, "_beton_lines")
        self.con.execute(
            f"insert into {self.reject_table} select {_lit(str(path))}, line, json_object('line', csv_line)::varchar, "
            f"'unreadable JSON line: ' || reason from _beton_rej"
        )
        self.con.execute(
            f"create or replace temp table _beton_lines as select * exclude (_rec), _rec as _line from {self._numbered('_beton_lines')}"
        )
        self.con.execute("delete from _beton_lines where line is null or trim(line) = ''")
        self.con.execute(
            "alter table _beton_lines add column kind varchar; "
            "update _beton_lines set kind = case when json_valid(line) then json_type(case when json_valid(line) then line end::json) end"
        )
        self.con.execute(
            f"insert into {self.reject_table} select {_lit(str(path))}, _line, json_object('line', line)::varchar, "
            f"case when kind is null then 'malformed JSON line' else 'JSON line is not an object (' || {_JSON_KIND_NAME} || ')' end "
            f"from _beton_lines where kind is distinct from 'OBJECT'"
        )
        self.con.execute(
            "create or replace temp table _beton_objs as select line::json as j, _line from _beton_lines where kind = 'OBJECT'"
        )
        self._insert_objects(path)
        self.con.execute("drop table _beton_objs; drop table _beton_lines; drop table _beton_rej")

    def _insert_objects(self, path: Path) -> None:
        """`_beton_objs` (j: one JSON object per record, _line) → the text table. A key left out of every
        record is a column of nulls when the column may be empty (exports omit null keys); a required
        column that must not be empty and is absent from every record is a missing column."""
        keys = {r[0] for r in self.con.sql("select distinct unnest(json_keys(j)) from _beton_objs").fetchall()}
        if _scalar(self.con, "select count(*) from _beton_objs") > 0:
            self._check_columns(path, sorted(keys), absent_is_null=True)
        select = {}
        for col in self.spec.columns:
            if col.name not in keys:
                continue
            path_ = _lit("$." + _q(col.name))
            if col.kind == "json":
                # An object stays JSON text; a string holding JSON text (as CSV exports write it) is unwrapped.
                select[col.name] = (
                    f"(case when json_type(j, {path_}) = 'VARCHAR' then json_extract_string(j, {path_}) "
                    f"when json_type(j, {path_}) = 'NULL' then null else json_extract(j, {path_})::varchar end)"
                )
            else:
                select[col.name] = f"json_extract_string(j, {path_})"
        self._insert(path, select, "_beton_objs", "_line")


def _check_magic(path: Path) -> None:
    """Refuse, naming the file and what to rename it to, a file whose bytes are not what its name says
    (gzip, zstd or Parquet bytes in a `.csv`, a zstd stream around a `.parquet.zst`)."""
    with path.open("rb") as f:
        head = f.read(4)
    suffix = file_suffix(path) or ""
    compressed = suffix.endswith((".gz", ".zst"))
    kind = next((k for magic, k in _MAGIC.items() if head.startswith(magic)), None)
    if suffix == ".parquet.zst" and kind == "zstd":
        raise SourceError(
            f"{path}: a zstd stream around the file, not a Parquet file with zstd pages as PostHog writes; "
            f"decompress it (zstd -d) and name it .parquet"
        )
    if file_format(path) != "parquet" and not compressed and kind is not None:
        stem = path.name[: -len(suffix)] if suffix else path.name
        fix = {"gzip": path.name + ".gz", "zstd": path.name + ".zst", "Parquet": stem + ".parquet"}[kind]
        raise SourceError(
            f"{path}: the file holds {kind} bytes, but its name says plain {file_format(path).upper()} text; "
            f"rename it to {fix}"
        )


def _reference_reason(con: duckdb.DuckDBPyConnection, col: Column) -> str | None:
    """SQL: the dangling-reference reason of a column that refers to another table (None when the
    referenced table is not loaded, so the reference cannot be checked)."""
    table, key = col.references
    raw = TABLES_BY_NAME[table].raw_table
    if not table_exists(con, *raw.split(".")):
        return None
    v = _q(col.name)
    return (
        f"case when {_present(v)} and trim({v}) not in (select trim({_q(key)}) from {raw} where {_q(key)} is not null) "
        f"then '{col.name}: not in {table} (dangling reference): ' || left(trim({v}), 40) end"
    )


@dataclass
class _MinorUnits:
    """The table-level check that amounts are not written in major units ("79.00", "79.50"), counted
    chunk by chunk and judged on the whole table (`check`): refused when more than half of the non-empty
    values of a minor-units column have exactly two decimals. Loading them would read "79.00" as 79
    cents and quarantine "79.50"; a stray "79.50" among cents is quarantined as usual. The counts add
    up over the chunks and the examples are the first three in (file, line) order, so the verdict and
    the message do not depend on the chunking."""

    spec: TableSpec
    counts: dict[str, tuple[int, int, list[str]]] = field(default_factory=dict)

    def add(self, con: duckdb.DuckDBPyConnection, text: str) -> None:
        """Count one chunk's text table."""
        two = "regexp_full_match(trim({v}), '[+-]?[0-9]+[.,][0-9]{{2}}')"
        for col in self.spec.columns:
            if not col.minor_units:
                continue
            v = _q(col.name)
            n, n2, examples = con.sql(
                f"select count(*) filter (where {_present(v)}), count(*) filter (where {two.format(v=v)}), "
                f"(list(trim({v}) || ' (' || _file || ' line ' || _line || ')' order by _file, _line) "
                f"filter (where {two.format(v=v)}))[1:3] "
                f"from {text}"
            ).fetchall()[0]
            n0, n20, examples0 = self.counts.get(col.name, (0, 0, []))
            self.counts[col.name] = (n0 + n, n20 + n2, (examples0 + list(examples or []))[:3])

    def check(self) -> None:
        """Raise `SourceError` naming the first column written in major units, with examples."""
        for col in self.spec.columns:
            n, n2, examples = self.counts.get(col.name, (0, 0, []))
            if n2 and 2 * n2 > n:
                raise SourceError(
                    f"{self.spec.name}.{col.name}: {n2} of {n} values are written with two decimals, as major units "
                    f"(e.g. {'; '.join(examples)}); the contract wants integer minor units (cents: 79.00 is 7900). "
                    f"Export the amounts in cents (Stripe's API amounts are) or multiply them by 100 "
                    f"(zero-decimal currencies such as JPY stay as they are)"
                )


def _hash128(columns: list[str]) -> str:
    """SQL: a 128-bit hash (UHUGEINT) of text columns: `md5_number` of an injective encoding of the values,
    each written as its length in bytes, a colon and the text, or `-` when NULL (so `("a", "b")`,
    `("ab", NULL)` and `("a:b", "")` encode differently). Two tuples get the same hash only when they are
    equal, up to a 128-bit hash collision (about n² / 2¹²⁹ for n rows: 10⁻²³ for 100M rows). The
    encoding is built by string concatenation, not a JSON list, which costs less memory per row."""
    parts = ", ".join(f"coalesce(strlen({c}) || ':' || {c}, '-')" for c in columns)
    return f"md5_number(concat({parts}))"


class _SeenRows:
    """What the ingest of a table remembers of its earlier chunks, so that the row rules read across
    chunks as across the whole table: the 128-bit hash of every row kept so far (loaded or quarantined:
    every row that is not an exact duplicate) and of the key of every loaded row (`_hash128`). Integers
    only, one row per row read at most; each is joined against one chunk, which DuckDB builds its hash
    table on (the smaller side).

    A row of a later chunk is an exact duplicate when its row hash is seen (equal in every contract
    column, as read, to an earlier row: up to a 128-bit hash collision; equal rows have equal keys), and
    repeats a key when its key hash is seen (an earlier row that passes every rule has the same key).

    `keep`: the hashes are kept in the warehouse (`STATE_SCHEMA`, `ingest_rows__<table>` and `ingest_keys__<table>`)
    for the next ingest to continue from (`plan_ingest`); otherwise they live in temp tables for this
    run only. `continue_kept`: the hashes kept by the earlier loads count as seen, and this run's are
    appended to them on `commit` (an incremental ingest); otherwise `commit` replaces them."""

    def __init__(self, con: duckdb.DuckDBPyConnection, spec: TableSpec, keep: bool, continue_kept: bool = False):
        self.con, self.spec, self.keep, self.continue_kept = con, spec, keep, continue_kept
        self.kept_rows, self.kept_keys = (_state_table(f"ingest_{kind}__{spec.name}") for kind in ("rows", "keys"))
        if keep:
            self.new_rows, self.new_keys = (
                _state_table(f"ingest_{kind}__{spec.name}__loading") for kind in ("rows", "keys")
            )
            con.execute(f"create schema if not exists {STATE_SCHEMA}")
            table = "table"
        else:
            self.new_rows, self.new_keys, table = "_beton_seen_rows", "_beton_seen_keys", "temp table"
        con.execute(f"create or replace {table} {self.new_rows} (r uhugeint)")
        con.execute(f"create or replace {table} {self.new_keys} (k uhugeint)")

    @property
    def rows(self) -> str:
        """SQL: the relation of the row hashes seen (column `r`)."""
        if self.continue_kept:
            return f"(select r from {self.kept_rows} union all select r from {self.new_rows})"
        return self.new_rows

    @property
    def keys(self) -> str:
        """SQL: the relation of the loaded rows' key hashes seen (column `k`)."""
        if self.continue_kept:
            return f"(select k from {self.kept_keys} union all select k from {self.new_keys})"
        return self.new_keys

    @property
    def row_hash(self) -> str:
        """SQL over a text table: the row's hash (every contract column, as read)."""
        return _hash128([_q(c) for c in self.spec.column_names])

    @property
    def key_hash(self) -> str | None:
        """SQL over a text table: the key's hash (None when the table has no key)."""
        return _hash128([_q(k) for k in self.spec.key]) if self.spec.key else None

    def remember(self) -> None:
        """Add the current chunk (`_beton_checked` without its exact duplicates; `_beton_keydups`)."""
        self.con.execute(f"insert into {self.new_rows} select _r from _beton_checked")
        if self.spec.key:
            self.con.execute(
                f"insert into {self.new_keys} select c._k from _beton_checked c "
                f"anti join _beton_keydups d on d._file = c._file and d._line = c._line where c._reason is null"
            )

    def commit(self) -> None:
        """Within the caller's transaction: keep this run's hashes for the next ingest (appended to the
        kept ones, or replacing them), or, when they are not kept, drop any kept before: they would no
        longer describe the table."""
        if self.keep and self.continue_kept:
            self.con.execute(f"insert into {self.kept_rows} select r from {self.new_rows}")
            self.con.execute(f"insert into {self.kept_keys} select k from {self.new_keys}")
            return
        self.con.execute(f"drop table if exists {self.kept_rows}; drop table if exists {self.kept_keys}")
        if self.keep:
            for new, kept in ((self.new_rows, self.kept_rows), (self.new_keys, self.kept_keys)):
                self.con.execute(f"alter table {new} rename to {kept.split('.', 1)[1]}")

    def drop(self) -> None:
        """Drop this run's working tables (after `commit`, only the appended copies remain to drop)."""
        self.con.execute(f"drop table if exists {self.new_rows}; drop table if exists {self.new_keys}")


def _check_rows(
    con: duckdb.DuckDBPyConnection, spec: TableSpec, text: str, raw_row: str, seen: _SeenRows
) -> tuple[int, list[str]]:
    """Apply the row rules to one chunk's text table, given the earlier chunks (`seen`), in (file, line)
    order across the whole table:

    1. a row equal in every contract column (as read) to an earlier row is an exact duplicate: dropped
       and counted;
    2. every other row is checked: `_reason` is NULL when it passes every rule, else every reason;
    3. a row that passes but repeats the key (`spec.key`) of an earlier row that passes is a key
       duplicate (first wins).

    Leaves `_beton_checked` (the chunk without its exact duplicates: per row `_file`, `_line`, the typed
    values `_v<i>` in contract order, `_reason`, the key and row hashes `_k`, `_r`, and `_raw`, the row
    as read, JSON text, for a rejected row or a key candidate only) and `_beton_keydups` (_file, _line).
    Rows are compared by their 128-bit hashes (`_SeenRows`); the raw row is built only for the rows that
    may be rejected, and windows run only over the rows whose hash repeats within the chunk.
    Returns the number of exact duplicates and the reference columns that could not be checked."""
    cols = [_column_sql(i, c) for i, c in enumerate(spec.columns)]
    reasons = [r for c in cols for r in c.reasons]
    unchecked = []
    for col in spec.columns:
        if col.references is not None:
            reason = _reference_reason(con, col)
            if reason is None:
                unchecked.append(f"{col.name} → {col.references[0]}.{col.references[1]}")
            else:
                reasons.append(reason)
    reason_sql = "nullif(concat_ws('; ', " + ", ".join(reasons) + "), '')" if reasons else "null"

    def stage(pairs: list[tuple[str, str]]) -> str:
        return "".join(f", {expr} as {alias}" for alias, expr in pairs)

    first = stage([pair for c in cols for pair in c.first])
    second = stage([pair for c in cols for pair in c.second])
    typed = ", ".join(f"{c.typed} as _v{i}" for i, c in enumerate(cols))
    # Key candidates: rows whose key occurs more than once in the chunk or is the key of an earlier
    # loaded row; only they can repeat a kept key, and only they get the raw row before they are judged.
    # `_beton_keyseen`: the chunk's keys that an earlier chunk loaded (the one scan of `seen.keys` per chunk).
    key_hash, kc, key_col = seen.key_hash, "false", "null::uhugeint"
    con.execute("create or replace temp table _beton_keyseen (k uhugeint)")
    if key_hash:
        con.execute(
            f"insert into _beton_keyseen select s.k from {seen.keys} s "
            f"join (select distinct {key_hash} as h from {text}) c on s.k = c.h"
        )
        con.execute(
            f"create or replace temp table _beton_keymulti as "
            f"select {key_hash} as h from {text} group by 1 having count(*) > 1 union select k from _beton_keyseen"
        )
        if _scalar(con, "select count(*) from _beton_keymulti"):
            kc = f"{key_hash} in (select h from _beton_keymulti)"
        key_col = key_hash
    con.execute(
        f"""
        create or replace temp table _beton_checked as
        with first_stage as (select *{first} from {text}),
        second_stage as (select *{second} from first_stage),
        checked as (select *, {reason_sql} as _reason, {kc} as _kc from second_stage)
        select _file, _line, {typed}, _reason, _kc, {key_col} as _k, {seen.row_hash} as _r,
               case when _reason is not null or _kc then {raw_row} end as _raw
        from checked
        """
    )
    con.execute(
        f"""
        create or replace temp table _beton_dups as
        select _file, _line from (
            select _file, _line, row_number() over (partition by _r order by _file, _line) as _n
            from _beton_checked where _r in (select _r from _beton_checked group by 1 having count(*) > 1)
        ) where _n > 1
        union
        select c._file, c._line from {seen.rows} s join _beton_checked c on c._r = s.r
        """
    )
    dups = _scalar(con, "select count(*) from _beton_dups")
    if dups:
        con.execute("delete from _beton_checked c using _beton_dups d where c._file = d._file and c._line = d._line")
    con.execute(
        """
        create or replace temp table _beton_keydups as
        with candidates as (select _file, _line, _k from _beton_checked where _kc and _reason is null)
        select _file, _line from (
            select _file, _line, row_number() over (partition by _k order by _file, _line) as _n from candidates
        ) where _n > 1
        union
        select c._file, c._line from _beton_keyseen s join candidates c on c._k = s.k
        """
    )
    con.execute("drop table _beton_dups; drop table _beton_keyseen; drop table if exists _beton_keymulti")
    return dups, unchecked


def ensure_quarantine(con: duckdb.DuckDBPyConnection) -> None:
    """Create `beton.quarantine` if it does not exist."""
    con.execute(QUARANTINE_DDL)


def file_chunks(files: Sequence[Path], max_bytes: int) -> list[tuple[Path, ...]]:
    """The files in (path) order, the order the row rules read them in, cut into runs of consecutive
    files whose sizes add up to at most `max_bytes`; a file larger than that is a run of its own."""
    chunks: list[list[Path]] = []
    size = 0
    for path in sorted(files, key=str):
        n = path.stat().st_size
        if not chunks or size + n > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(path)
        size += n
    return [tuple(c) for c in chunks]


INGEST_MODES = ("full", "incremental", "unchanged")
"""How a table was ingested: every file read again (`full`), only the files after the ones read before
(`incremental`), or nothing to read (`unchanged`: no new file, the earlier ones as they were)."""


def _state_table(name: str) -> str:
    return f"{STATE_SCHEMA}.{_q(name)}"


def file_stamp(path: Path) -> list:
    """`[path, size, sha256 of the content]`: what says a file read before is still the same file. The whole
    file is hashed (about 1 s per GB), so an edit that keeps the size and the modification time is noticed."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return [str(path), path.stat().st_size, digest]


def ingest_rules(spec: TableSpec) -> str:
    """A fingerprint of everything that decides a row's fate but the clock: the table's contract, the code of
    the ingest, the contract and the file reader, DuckDB's version and the currency codes (pycountry's).
    Kept state made under other rules is not continued (the next ingest is full). The one rule that reads the
    clock ("in the future") is followed by the kept state's `future_due` instead (`plan_ingest`)."""
    digest = hashlib.sha256(f"{spec!r}|duckdb {duckdb.__version__}|{_ISO_CURRENCIES!r}".encode())
    for module in (_contract_module, _files_module, sys.modules[__name__]):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


def read_ingest_state(con: duckdb.DuckDBPyConnection, table: str) -> dict | None:
    """The state the last incremental-capable ingest of `table` kept, or None."""
    if not table_exists(con, STATE_SCHEMA, "ingest_files"):
        return None
    rows = con.execute(f"select state from {STATE_SCHEMA}.ingest_files where source_table = ?", [table]).fetchall()
    return json.loads(rows[0][0]) if rows else None


def _write_ingest_state(con: duckdb.DuckDBPyConnection, table: str, state: dict | None, at: datetime) -> None:
    """Replace `table`'s kept state (None: forget it). Within the caller's transaction."""
    if state is None and not table_exists(con, STATE_SCHEMA, "ingest_files"):
        return
    con.execute(f"create schema if not exists {STATE_SCHEMA}")
    con.execute(
        f"create table if not exists {STATE_SCHEMA}.ingest_files "
        "(source_table varchar not null, state varchar not null, ingested_at timestamp not null)"
    )
    con.execute(f"delete from {STATE_SCHEMA}.ingest_files where source_table = ?", [table])
    if state is not None:
        con.execute(f"insert into {STATE_SCHEMA}.ingest_files values (?, ?, ?)", [table, json.dumps(state), at])


def _reference_tokens(con: duckdb.DuckDBPyConnection, spec: TableSpec) -> dict[str, str | None]:
    """Per table `spec` refers to: the generation of its kept state, `absent` when it is not loaded, or
    None when it is loaded without kept state (its rows cannot be known unchanged)."""
    tokens: dict[str, str | None] = {}
    for col in spec.columns:
        if col.references is None:
            continue
        table = col.references[0]
        if not table_exists(con, *TABLES_BY_NAME[table].raw_table.split(".")):
            tokens[table] = "absent"
            continue
        state = read_ingest_state(con, table)
        tokens[table] = None if state is None else state["generation"]
    return tokens


FUTURE_DUE_MARGIN = timedelta(hours=1)
"""How long before a row quarantined as in the future stops being so that the next ingest is already full."""


def _future_due(con: duckdb.DuckDBPyConnection, spec: TableSpec) -> datetime | None:
    """When the earliest row of the current chunk (`_beton_checked`) quarantined as "in the future" (more
    than a day ahead of the clock) would no longer be (`FUTURE_DUE_MARGIN` early), or None. A full ingest
    from then on would load it, so an incremental one must not continue past it (`plan_ingest`)."""
    parts = [
        f"min(_v{i}) filter (where contains(_reason, {_lit(_future_reason(col.name))}))"
        for i, col in enumerate(spec.columns)
        if col.kind == "timestamp" and not col.may_be_future
    ]
    if not parts:
        return None
    earliest = _scalar(con, f"select list_min([{', '.join(parts)}]) from _beton_checked")
    return None if earliest is None else earliest - timedelta(days=1) - FUTURE_DUE_MARGIN


@dataclass(frozen=True)
class IngestPlan:
    """What an ingest of one table will read, and why (`plan_ingest`)."""

    mode: str
    """One of `INGEST_MODES`."""
    reason: str
    files: tuple[Path, ...]
    """The files to read: every file (full), or those after the ones read before (incremental)."""
    stamps: tuple[tuple, ...]
    """Every file's stamp (`file_stamp`), in read order: what the state keeps after this ingest (none when
    `ingest.incremental` is off)."""
    state: dict | None = None
    """The kept state continued from (incremental, unchanged)."""


def plan_ingest(
    con: duckdb.DuckDBPyConnection, source_dir: Path, spec: TableSpec, files: Sequence[Path], incremental: bool
) -> IngestPlan:
    """Decide between a full, an incremental and no ingest of `spec`'s `files`.

    An ingest continues the kept state only when it gives the same table as reading every file again:
    the rules (`ingest_rules`) and the source directory are those of the kept state, every table the rows
    refer to is the one they were checked against (`_reference_tokens`), every file read before is still
    there and unchanged (`file_stamp`), and every new file sorts after them: the row rules read files in
    path order, and which of two rows with the same key is kept depends on it. Otherwise the ingest is
    full, with the reason."""
    files = tuple(sorted(files, key=str))
    if not incremental:  # nothing is kept, so no file is hashed
        return IngestPlan("full", "ingest.incremental is off", files, ())
    stamps = tuple(tuple(file_stamp(p)) for p in files)

    def full(reason: str) -> IngestPlan:
        return IngestPlan("full", reason, files, stamps)

    state = read_ingest_state(con, spec.name)
    if state is None:
        return full("no earlier load kept its state")
    if state["rules"] != ingest_rules(spec):
        return full("the ingest rules changed since the last load (a beton or DuckDB upgrade)")
    if state["source_dir"] != str(source_dir):
        return full(f"the source directory changed since the last load (it was {state['source_dir']})")
    due = state.get("future_due")
    if due is not None and datetime.now(UTC).replace(tzinfo=None) >= datetime.fromisoformat(due):
        return full(
            "a row quarantined as in the future is due (its time is now within a day): the rows are judged anew"
        )
    tokens = _reference_tokens(con, spec)
    moved = sorted(t for t, token in tokens.items() if token is None or token != state["references"].get(t))
    if moved:
        return full(
            f"{', '.join(moved)} (which its rows refer to) was loaded again or dropped since: references are checked anew"
        )
    needed = [spec.raw_table, *(f"{STATE_SCHEMA}.ingest_{kind}__{spec.name}" for kind in ("rows", "keys"))]
    if not all(table_exists(con, *name.split(".")) for name in needed):
        return full("the raw table or its kept hashes are missing")
    before = [tuple(s) for s in state["files"]]
    for i, stamp in enumerate(before):
        if i >= len(stamps) or stamps[i][0] != stamp[0]:
            if stamp[0] not in {s[0] for s in stamps}:
                return full(f"{stamp[0]}, read before, is gone")
            return full(
                f"the new file {stamps[i][0]} sorts before {stamp[0]}, read before: new files must sort after "
                "the ones read (files are read in path order, and the first of two rows with the same key is kept)"
            )
        if stamps[i] != stamp:
            return full(f"{stamp[0]} changed since it was read (its size or content)")
    new = files[len(before) :]
    if not new:
        return IngestPlan("unchanged", f"no new file; the {len(before)} read before are unchanged", (), stamps, state)
    return IngestPlan("incremental", f"{len(new)} new file(s) after the {len(before)} read before", new, stamps, state)


def ingest_table(
    con: duckdb.DuckDBPyConnection,
    source_dir: Path,
    spec: TableSpec,
    ingested_at: datetime | None = None,
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
    incremental: bool = False,
) -> IngestResult:
    """Validate and load one table from `source_dir` into `raw.raw_<table>`; see the module docstring.

    The files are read in chunks of consecutive files of at most `max_chunk_bytes` (`file_chunks`):
    each chunk is read as text, checked against the earlier chunks (`_SeenRows`, `_check_rows`), and its
    rows appended to a loading copy of the raw table and of the table's quarantine, so that DuckDB holds
    one chunk's text and typed rows at a time. The result does not depend on the chunking. The copies
    replace `raw.raw_<table>` and the table's quarantine rows in one transaction at the end, after the
    table-level check (`_MinorUnits`): a run that fails leaves the previous load as it was.

    `incremental`: keep the files read, the running totals and the row and key hashes (`STATE_SCHEMA`),
    and, when `plan_ingest` finds that reading only the new files gives the same table as reading them
    all, read only those, as the next chunks of the earlier load: their rows are appended (or nothing is
    done when there is no new file). Off: every file is read and any kept state is dropped."""
    if max_chunk_bytes < 1:
        raise ValueError(f"max_chunk_bytes must be at least 1 byte, not {max_chunk_bytes}")
    ingested_at = ingested_at or datetime.now(UTC).replace(tzinfo=None)
    con.execute("set TimeZone = 'UTC'")
    con.execute("create schema if not exists raw")
    ensure_quarantine(con)
    found = table_files(source_dir, spec.name)
    if not found.read and spec.required:
        skipped = f"; skipped: {'; '.join(found.skipped_text)}" if found.skipped else ""
        raise SourceError(
            f"{source_dir}: required table '{spec.name}' not found "
            f"(expected {spec.name}.<ext> or a {spec.name}/ folder of parts; read are: {SUPPORTED}){skipped}"
        )
    plan = plan_ingest(con, source_dir, spec, found.read, incremental)
    if plan.mode == "unchanged":
        return _ingest_result(con, spec, plan, plan.state, found)
    continuing = plan.mode == "incremental"
    before = plan.state if continuing else {}
    text, rejects = f"_beton_text_{spec.name}", f"_beton_rejects_{spec.name}"
    raw_schema, raw_name = spec.raw_table.split(".")
    loading_raw = f"{raw_schema}.{_q(raw_name + '__loading')}"
    loading_quarantine = f"beton.{_q('quarantine__loading_' + spec.name)}"
    key_reason = f"duplicate {'/'.join(spec.key or ())}: an earlier row with the same key was kept (first wins)"
    typed = ", ".join(f"_v{i}" for i in range(len(spec.columns)))
    chunk_tables = (text, rejects, "_beton_checked", "_beton_keydups")
    minor_units = _MinorUnits(spec, {c: tuple(v) for c, v in before.get("minor_units", {}).items()})
    seen = _SeenRows(con, spec, keep=incremental, continue_kept=continuing)
    rows_read, dups = before.get("rows_read", 0), before.get("duplicates", 0)
    dues = [datetime.fromisoformat(before["future_due"])] if before.get("future_due") else []
    extra_columns: set[str] = set(before.get("ignored_columns", ()))
    unchecked: list[str] = list(before.get("unchecked_references", ()))
    try:
        con.execute(_raw_table_ddl(spec, loading_raw))
        con.execute(f"create or replace table {loading_quarantine} as from beton.quarantine limit 0")
        for chunk in file_chunks(plan.files, max_chunk_bytes):
            loader = _TextLoader(con, spec, text, rejects)
            for path in chunk:
                loader.load(path)
            extra_columns |= loader.extra_columns
            minor_units.add(con, text)
            rows_read += _scalar(con, f"select count(*) from {text}") + _scalar(con, f"select count(*) from {rejects}")
            chunk_dups, unchecked = _check_rows(con, spec, text, loader.raw_row_sql(), seen)
            dups += chunk_dups
            dues += [due] if (due := _future_due(con, spec)) is not None else []
            con.execute(f"drop table {text}")
            con.execute(
                f"insert into {loading_raw} select {typed}, c._file, c._line from _beton_checked c "
                f"anti join _beton_keydups k on k._file = c._file and k._line = c._line where _reason is null"
            )
            con.execute(
                f"insert into {loading_quarantine} select {_lit(spec.name)}, _file, _line, _raw, _reason, ? "
                f"from _beton_checked where _reason is not null "
                f"union all select {_lit(spec.name)}, c._file, c._line, c._raw, {_lit(key_reason)}, ? "
                f"from _beton_checked c join _beton_keydups k on k._file = c._file and k._line = c._line "
                f"union all select {_lit(spec.name)}, _file, _line, _raw, reason, ? from {rejects}",
                [ingested_at, ingested_at, ingested_at],
            )
            seen.remember()
            con.execute("; ".join(f"drop table if exists {t}" for t in chunk_tables))
        minor_units.check()
        state = None
        if incremental:
            state = {
                "source_dir": str(source_dir),
                "rules": ingest_rules(spec),
                "generation": uuid.uuid4().hex,
                "references": _reference_tokens(con, spec),
                "files": [list(s) for s in plan.stamps],
                "rows_read": rows_read,
                "duplicates": dups,
                "ignored_columns": sorted(extra_columns),
                "unchecked_references": list(unchecked),
                "minor_units": {c: list(v) for c, v in minor_units.counts.items()},
                "future_due": min(dues).isoformat() if dues else None,
            }
        with transaction(con):
            if continuing:
                con.execute(f"insert into {spec.raw_table} select * from {loading_raw}")
            else:
                con.execute(f"drop table if exists {spec.raw_table}")
                con.execute(f"alter table {loading_raw} rename to {_q(raw_name)}")
                con.execute(f"delete from beton.quarantine where source_table = {_lit(spec.name)}")
            con.execute(f"insert into beton.quarantine select * from {loading_quarantine}")
            seen.commit()
            _write_ingest_state(con, spec.name, state, ingested_at)
    finally:
        # A run stopped part-way (an unreadable file) leaves no working table behind either.
        working = ("_beton_dups", "_beton_keyseen", "_beton_keymulti", "_beton_csv", "_beton_lines", "_beton_objs")
        for t in (
            *chunk_tables,
            *working,
            "_beton_rej",
            "_beton_rej_err",
            "_beton_rej_scan",
            loading_raw,
            loading_quarantine,
        ):
            con.execute(f"drop table if exists {t}")
        seen.drop()
    totals = {
        "rows_read": rows_read,
        "duplicates": dups,
        "ignored_columns": sorted(extra_columns),
        "unchecked_references": list(unchecked),
    }
    return _ingest_result(con, spec, plan, totals, found)


def _ingest_result(
    con: duckdb.DuckDBPyConnection, spec: TableSpec, plan: IngestPlan, totals: dict, found: TableFiles
) -> IngestResult:
    """The table's `IngestResult`: the loaded and quarantined rows as they are in the warehouse now, the
    rows read and exact duplicates over every file read into it (`totals`)."""
    loaded = _scalar(con, f"select count(*) from {spec.raw_table}")
    reason_rows = con.sql(
        f"select reason, count(*) from beton.quarantine where source_table = {_lit(spec.name)} group by 1 order by 2 desc"
    ).fetchall()
    return IngestResult(
        table=spec.name,
        files=tuple(str(p) for p in sorted(found.read, key=str)),
        rows_read=totals["rows_read"],
        rows_loaded=loaded,
        rows_quarantined=sum(n for _, n in reason_rows),
        exact_duplicates_dropped=totals["duplicates"],
        ignored_columns=tuple(totals["ignored_columns"]),
        quarantine_reasons=_summarise_reasons(reason_rows),
        skipped_files=tuple(found.skipped_text),
        unchecked_references=tuple(totals["unchecked_references"]),
        mode=plan.mode,
        mode_reason=plan.reason,
        files_read=tuple(str(p) for p in plan.files),
    )


def _summarise_reasons(rows: list[tuple[str, int]]) -> dict[str, int]:
    """Quarantine counts by reason (the top 20), with the row-specific tail (the offending value) cut off."""
    out: Counter[str] = Counter()
    for reason, n in rows:
        for part in reason.split("; "):
            out[": ".join(part.split(": ")[:2])] += n
    return dict(out.most_common(20))


# --- Source freshness -------------------------------------------------------------------------------
#
# beton's "now" is the as-of time (the latest event, or `windows.as_of`), never the wall clock, so a
# source is judged by how far its newest row trails the as-of: a billing export that stopped a month
# before the events is stale whatever day it is, and demo data from 2025 is fresh in 2030. The wall
# clock is consulted only when `freshness.max_age_days` is set (production), and only for the events,
# which set the as-of: every other source is tied to them by its lag.


class FreshnessLimits(Protocol):
    """The `freshness` section of beton.yaml (`settings.FreshnessSettings`), as far as the limits need it."""

    max_lag_days: Mapping[str, float | None]
    max_age_days: float | None


def freshness_limits(freshness: FreshnessLimits, spec: TableSpec) -> tuple[float | None, float | None]:
    """(max_lag_days, max_age_days) of one table under the `freshness` settings.

    `freshness.max_lag_days` maps table names to days (null: no lag check); a table not listed keeps its
    contract default `spec.max_lag_days`, by its role: 3 days for the events, 35 for the other activity
    tables (invoices, deal stage changes, intent signals), none for the entity tables (customers,
    companies, people, subscriptions, deals: a quiet month without a new one is not a stale export).
    `freshness.max_age_days` (days, null: off) applies to the events only.
    """
    lags = freshness.max_lag_days
    max_lag = lags.get(spec.name, spec.max_lag_days)  # a listed null means "no lag check"
    max_age = freshness.max_age_days if spec.name == "events" else None
    return (None if max_lag is None else float(max_lag)), (None if max_age is None else float(max_age))


@dataclass(frozen=True)
class SourceFreshness:
    """How current one loaded source table is.

    lag_days = (as_of − newest) / 1 day, where newest = max(freshness column) over the loaded rows and
    as_of = `windows.as_of`, else the newest event; age_days = (now − newest) / 1 day (wall clock).
    The table is fresh when it has a row (or is optional), lag_days ≤ max_lag_days and
    age_days ≤ max_age_days (a limit of None is not checked).
    """

    table: str
    column: str
    required: bool
    newest: datetime | None
    as_of: datetime | None
    now: datetime
    max_lag_days: float | None
    max_age_days: float | None

    AGE_SETTING = "freshness.max_age_days"

    @property
    def lag_setting(self) -> str:
        """The beton.yaml key that sets this table's lag limit."""
        return f"freshness.max_lag_days.{self.table}"

    @property
    def lag_days(self) -> float | None:
        if self.newest is None or self.as_of is None:
            return None
        return (self.as_of - self.newest).total_seconds() / 86400

    @property
    def age_days(self) -> float | None:
        return None if self.newest is None else (self.now - self.newest).total_seconds() / 86400

    @property
    def problems(self) -> tuple[str, ...]:
        """Why the table is stale or empty, one sentence each; empty when fresh."""
        if self.newest is None:
            return (f"{self.table}: no loaded row has a {self.column}",) if self.required else ()
        out = []
        if self.max_lag_days is not None:
            if self.as_of is None:
                out.append(f"{self.table}: lag cannot be measured: no events loaded and windows.as_of is not set")
            elif self.lag_days > self.max_lag_days:
                out.append(
                    f"{self.table}: newest {self.column} {self.newest:%Y-%m-%d %H:%M} is {self.lag_days:.1f} days "
                    f"behind the as-of {self.as_of:%Y-%m-%d %H:%M}, over the limit of {self.max_lag_days:g} days; "
                    f"if the export is not stale, set {self.lag_setting} in beton.yaml to more days (null: no check)"
                )
        if self.max_age_days is not None and self.age_days > self.max_age_days:
            out.append(
                f"{self.table}: newest {self.column} {self.newest:%Y-%m-%d %H:%M} is {self.age_days:.1f} days "
                f"old by the wall clock, over the limit of {self.max_age_days:g} days; if the export is not stale, "
                f"set {self.AGE_SETTING} in beton.yaml to more days (null: no check)"
            )
        return tuple(out)

    @property
    def fresh(self) -> bool:
        return not self.problems

    @property
    def lag_unmeasurable(self) -> bool:
        """The table has rows and a lag limit, but there is no as-of to measure the lag against (no events
        loaded and no `windows.as_of`): the events' own check reports that."""
        return self.newest is not None and self.as_of is None and self.max_lag_days is not None

    @property
    def summary(self) -> str:
        """One line for people: the problems, else the newest row and how far it trails the as-of."""
        if self.problems:
            return "; ".join(self.problems)
        if self.newest is None:
            return f"optional table '{self.table}' has no rows"
        lag = f", {self.lag_days:.1f} days behind the as-of" if self.lag_days is not None else ""
        return f"newest {self.column} {self.newest:%Y-%m-%d %H:%M}{lag}"


def parse_timestamp(con: duckdb.DuckDBPyConnection, text: str) -> datetime:
    """A timestamp setting (ISO-8601 or epoch seconds; no zone = UTC) as naive UTC, by the contract's rules."""
    value = _scalar(con, f"select {_timestamp_expr(_lit(text))}")
    if value is None:
        raise ValueError(f"not a timestamp: {text!r} (expected ISO-8601 or epoch seconds)")
    return value


def as_of_time(con: duckdb.DuckDBPyConnection, as_of_setting: str | None) -> datetime | None:
    """The run's as-of: `windows.as_of` if set, else the newest loaded event (None when there is none).
    Naive UTC on a UTC session, as every warehouse connection is (`warehouse.connect`)."""
    if as_of_setting:
        return parse_timestamp(con, as_of_setting)
    if not table_exists(con, "raw", "raw_events"):
        return None
    return _scalar(con, "select max(timestamp) from raw.raw_events")


def measure_freshness(
    con: duckdb.DuckDBPyConnection,
    spec: TableSpec,
    as_of: datetime | None,
    max_lag_days: float | None,
    max_age_days: float | None = None,
    now: datetime | None = None,
) -> SourceFreshness:
    """The newest `spec.freshness_column` in `raw.raw_<table>` (None if the table is empty or absent) against the limits."""
    if spec.freshness_column is None:
        raise ValueError(f"table '{spec.name}' has no freshness column")
    newest = (
        _scalar(con, f"select max({_q(spec.freshness_column)}) from {spec.raw_table}")
        if table_exists(con, *spec.raw_table.split("."))
        else None
    )
    return SourceFreshness(
        table=spec.name,
        column=spec.freshness_column,
        required=spec.required,
        newest=newest,
        as_of=as_of,
        now=now or datetime.now(UTC).replace(tzinfo=None),
        max_lag_days=max_lag_days,
        max_age_days=max_age_days,
    )


def table_freshness(
    con: duckdb.DuckDBPyConnection, spec: TableSpec, freshness: FreshnessLimits, as_of_setting: str | None
) -> SourceFreshness:
    """How current one loaded table is under the `freshness` settings, against the run's as-of
    (`windows.as_of` when set, else the newest event: `as_of_time`)."""
    max_lag, max_age = freshness_limits(freshness, spec)
    return measure_freshness(con, spec, as_of_time(con, as_of_setting), max_lag, max_age)
