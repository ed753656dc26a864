"""What every connector shares: where pulled data lands, how a dlt pipeline is made, text values, secrets.

A connector is a dlt source (`dlt.source`) with one resource per contract table it fills, named as the table
(`crm_companies`, `billing_invoices`, `events`, …). Each resource yields rows with exactly the table's contract
columns, every value as text (`as_text`) and every column typed `text` (`text_columns`): dlt then never infers a
type, never splits a column into variants, and a malformed value lands as it came, for the ingest to quarantine
with its reason (rows read = loaded + quarantined + duplicates holds for pulled data as for files). A connector
never drops a record.

Pulled data lands as Parquet under `<landing>/<source>/<table>/<load id>.<file id>.parquet` (`landing_pipeline`):
`<landing>/<source>` is then an ordinary source directory for those tables, read by the same ingest as files. A
new load's files sort after the old ones (dlt's load ids grow with time), so the incremental ingest reads only
them; a `replace` resource's new load removes the old files, and the ingest then reads the table again in full.
dlt keeps each resource's cursor in its state, committed with the load it belongs to: a pull that fails half-way
commits neither, and the next pull starts from the last committed cursor.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

from beton_pipeline.sources.contract import TABLES_BY_NAME

os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
"""dlt reports anonymous usage to dltHub by default; beton's pulls do not (set the variable to true to allow it)."""

LAYOUT = "{table_name}/{load_id}.{file_id}.{ext}"
"""dlt's file layout under `<landing>/<source>/`: one folder per contract table, files named by load."""

PIPELINES_DIR = ".dlt"
"""dlt's working folder (pipeline state, pending packages) under the landing directory (hidden from the ingest)."""


class ConnectorError(RuntimeError):
    """A connector cannot pull: a missing secret, a refused credential, an answer it cannot read.

    The message says what failed, with the numbers, and what to change; it never holds a secret."""


def connector_error(exc: BaseException) -> ConnectorError | None:
    """The `ConnectorError` behind `exc`, which dlt wraps in its own step and extraction errors (None: none)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ConnectorError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def text_columns(table: str) -> dict[str, dict[str, Any]]:
    """dlt column hints for a contract table: every contract column as nullable text, in contract order."""
    return {c.name: {"data_type": "text", "nullable": True} for c in TABLES_BY_NAME[table].columns}


def as_text(value: Any) -> str | None:
    """A value as the text a CSV export would hold: None stays None; objects and lists as JSON; times as ISO."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return str(value)  # numbers (int, float, Decimal) and anything else as Python writes them


def contract_row(table: str, values: Mapping[str, Any]) -> dict[str, str | None]:
    """`values` as one row of `table`: every contract column present (absent ones None), every value text."""
    return {c.name: as_text(values.get(c.name)) for c in TABLES_BY_NAME[table].columns}


def contract_table(table: str, rows: list[dict[str, str | None]]):
    """Contract rows (`contract_row`) as one Arrow table of text columns: dlt writes it to Parquet as it is, without
    normalising row by row (8 s per 100k events as dicts; an Arrow page costs next to nothing)."""
    import pyarrow as pa

    names = [c.name for c in TABLES_BY_NAME[table].columns]
    return pa.table({name: pa.array([row.get(name) for row in rows], pa.string()) for name in names})


def secret(env_var: str, source: str) -> str:
    """The value of the environment variable holding a connector's secret; a clear error when it is unset."""
    value = os.environ.get(env_var, "").strip()
    if not value:
        raise ConnectorError(
            f"the {source} connector is enabled (sources.{source} in beton.yaml) but {env_var} is not set: "
            f"export {env_var}=… with the key, or set sources.{source}.enabled: false."
        )
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        # An HTTP library would refuse the header and put its value (the key) in the error it raises.
        raise ConnectorError(
            f"{env_var} holds a space, a line break or a control character inside the key: set it to the key alone."
        )
    return value


def landing_pipeline(source: str, landing: Path):
    """The dlt pipeline that lands `source`'s resources under `<landing>/<source>/` as Parquet."""
    import dlt  # here: dlt is imported only where a connector runs

    landing = Path(landing).resolve()
    landing.mkdir(parents=True, exist_ok=True)
    return dlt.pipeline(
        pipeline_name=f"beton_{source}",
        pipelines_dir=str(landing / PIPELINES_DIR),
        destination=dlt.destinations.filesystem(bucket_url=landing.as_uri(), layout=LAYOUT),
        dataset_name=source,
    )


def source_dir(source: str, landing: Path) -> Path:
    """The source directory holding what `source` pulled (one folder per contract table)."""
    return Path(landing).resolve() / source


def pull(dlt_source, landing: Path, *, full_refresh: bool = False):
    """Run `dlt_source` into the landing directory outside Dagster (the tests and `make bench-connectors`; the pull
    assets run through dagster-dlt, which drops dlt's local state first and restores it from the landing).

    `full_refresh` drops the source's state and tables first, so every resource is pulled from the start."""
    pipeline = landing_pipeline(dlt_source.name, landing)
    try:
        info = pipeline.run(dlt_source, loader_file_format="parquet", refresh="drop_sources" if full_refresh else None)
    except Exception as exc:
        reason = connector_error(exc)
        if reason is None:
            raise
        raise reason from None
    info.raise_on_failed_jobs()
    return info
