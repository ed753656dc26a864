"""The same dbt models on Spark (`warehouse.engine: spark`, dbt-spark in local mode) give the same relations as on
DuckDB, row by row, and discovery on the relations Spark built finds the same signals.

One small demo (500 accounts, 6 months) with rows planted where the two engines part by default:
- two CRM companies with one domain, one without created_at, and two CRM people with one (free-mail) e-mail, one
  without created_at: Spark sorts NULL first, DuckDB last (the models write `nulls last`);
- an account whose first event is at .700 s and whose next one comes 0.2 s before a day later: dbt-spark's own
  `dateadd` works in whole seconds and put it outside the first day (macros/dates.sql);
- a property whose key has a dot in it (`plan.name`, a configured property feature): Spark's JSON path reads
  `$.plan.name` as two keys (macros/json.sql writes `$['plan.name']`).

Each engine gets its own warehouse, ingested from the same files through the same Dagster definitions, then the
cohort counts and `signals` assets (discovery) run on each. Every relation dbt built (staging, intermediate,
marts, reference) must have the same columns, types and rows (floats to 1e-9) in both files, and so must
beton.signals (but for when it ran). Needs the `spark` extra and Java 17 (`make test` installs both).
Spark's JVM start-up and its per-query overhead make the Spark build ~100 s of the test."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from benchmarks.compare_warehouses import compare, read
from beton_pipeline.defs.partitions import cohort_months, range_tags
from beton_pipeline.defs.transform.dbt_assets import spark_unavailable
from beton_pipeline.sources.demo import generate_demo
from beton_pipeline.store.tables import eligible_cohort_months
from beton_pipeline.warehouse import connect

pytestmark = [pytest.mark.spark, pytest.mark.slow(seconds=170)]

DBT_SCHEMAS = ("staging", "intermediate", "marts", "reference")
EDGE_DOMAIN = "edge-subsecond.io"
EDGE_EMAIL = "edge.person@gmail.com"
SETTINGS = """\
discovery:
  property_features:
    - {event: "$pageview", property: "$current_url", transform: url_path}
    - {event: edge_boundary, property: plan.name}
"""


def _plant_edges(src: Path) -> dict[str, str]:
    """Rows where the engines differ by default (module docstring); returns the names the assertions look for."""
    with open(src / "crm_companies.csv", newline="") as f:
        companies = list(csv.DictReader(f))
    with open(src / "crm_people.csv", newline="") as f:
        columns = next(csv.reader(f))
    company = next(c for c in companies if c["domain"] and c["created_at"])
    twin = {**company, "record_id": "rec_0000000000000000", "name": "Undated twin", "created_at": ""}
    with open(src / "crm_companies.csv", "a", newline="") as f:
        csv.DictWriter(f, fieldnames=list(company), lineterminator="\n").writerow(twin)
    people = [  # one free-mail address, two people: the dated one names the account of its events
        {"record_id": "rec_0000000000000002", "email": EDGE_EMAIL, "company_record_id": company["record_id"]},
        {"record_id": "rec_0000000000000001", "email": EDGE_EMAIL, "company_record_id": twin["record_id"]},
    ]
    with open(src / "crm_people.csv", "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writerows([{**people[0], "created_at": "2025-02-01T00:00:00Z"}, {**people[1], "created_at": ""}])
    group = {"$groups": {"company": EDGE_DOMAIN}}
    events = [
        ("edge-1", "$pageview", "2025-03-03T10:00:00.700Z", {**group, "$current_url": "https://x.io/a?b=1"}, None),
        ("edge-2", "edge_boundary", "2025-03-04T10:00:00.500Z", {**group, "plan.name": "pro", "plan": {"n": 1}}, None),
        ("edge-3", "edge_person", "2025-03-05T12:00:00Z", {}, {"email": EDGE_EMAIL}),
    ]
    (src / "events" / "part-0002.jsonl").write_text(
        "".join(
            json.dumps(
                {"uuid": u, "event": e, "timestamp": t, "distinct_id": u, "properties": p, "person_properties": pp}
            )
            + "\n"
            for u, e, t, p, pp in events
        )
    )
    return {"domain": company["domain"], "company": company["record_id"]}


def _build_and_discover(root: Path, src: Path, engine: str, monkeypatch) -> tuple[Path, set[str]]:
    """Ingest `src` into a new warehouse under `root`, build the models on `engine`, count the cohorts and run
    discovery (`signals`), as `beton run` does, through the code location's definitions. Returns the warehouse
    and the assets the ingest job (ingest, dbt, custom signals) materialized."""
    from beton_pipeline.definitions import defs  # parses the dbt project first when a model changed

    warehouse = root / "warehouse.duckdb"
    for name, value in {
        "BETON_WAREHOUSE": str(warehouse),
        "BETON_SOURCE_DIR": str(src),
        "BETON_CONFIG": str(root.parent / "beton.yaml"),
        "DBT_TARGET_PATH": str(root / "dbt_target"),
        "BETON_ENGINE": engine,
    }.items():
        monkeypatch.setenv(name, value)
    instance = dg.DagsterInstance.ephemeral()
    ingest = defs.resolve_job_def("daily_ingest_job").execute_in_process(instance=instance, raise_on_error=False)
    assert ingest.success, _failure(ingest)
    materialized = {e.asset_key.to_user_string() for e in ingest.get_asset_materialization_events()}
    with connect(warehouse, read_only=True) as con:
        months = eligible_cohort_months(con)
    assert len(months) >= 3, months
    instance.add_dynamic_partitions(cohort_months.name, months)
    job = defs.resolve_implicit_global_asset_job_def()
    for keys, tags in (([dg.AssetKey("signal_cohort_counts")], range_tags(months)), ([dg.AssetKey("signals")], {})):
        result = job.execute_in_process(instance=instance, asset_selection=keys, tags=tags, raise_on_error=False)
        assert result.success, _failure(result)
    return warehouse, materialized


def _failure(result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(str(e.event_specific_data.error)[-2000:] for e in result.all_events if e.is_step_failure)


def _relations(warehouse: Path) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Every relation in dbt's schemas: its kind (BASE TABLE, VIEW) and its columns with their types."""
    with duckdb.connect(str(warehouse), read_only=True) as con:
        kinds = con.sql(
            "select table_schema || '.' || table_name, table_type from information_schema.tables "
            f"where table_schema in {DBT_SCHEMAS}"
        ).fetchall()
        columns = con.sql(
            "select table_schema || '.' || table_name, column_name, data_type from information_schema.columns "
            f"where table_schema in {DBT_SCHEMAS} order by table_schema, table_name, ordinal_position"
        ).fetchall()
    return {name: (kind, [(c, t) for r, c, t in columns if r == name]) for name, kind in kinds}


@pytest.fixture(scope="module")
def two_engines(tmp_path_factory) -> tuple[Path, Path, dict[str, str], tuple[set[str], set[str]]]:
    problem = spark_unavailable()
    assert problem is None, problem  # the extra and Java are part of the test set-up (Makefile, .ci/run)
    root = tmp_path_factory.mktemp("engines")
    src = root / "src"
    generate_demo(src, n_accounts=500, seed=5, months=6)
    edges = _plant_edges(src)
    (root / "beton.yaml").write_text(SETTINGS)
    with pytest.MonkeyPatch.context() as monkeypatch:
        duck, duck_assets = _build_and_discover(root / "duckdb", src, "duckdb", monkeypatch)
        spark, spark_assets = _build_and_discover(root / "spark", src, "spark", monkeypatch)
    return duck, spark, edges, (duck_assets, spark_assets)


def test_the_graph_materializes_the_same_assets_on_both_engines(two_engines):
    """Every dbt model is reported materialized on Spark too (dagster-dbt reads dbt's log lines, which Spark's
    console output must not break), so the custom signals downstream of them run."""
    on_duckdb, on_spark = two_engines[3]
    assert on_spark == on_duckdb
    assert len(on_duckdb) == 10 + 26 + 1  # the raw tables, dbt's relations, custom_signals


def test_every_relation_spark_built_equals_duckdbs_row_by_row(two_engines):
    duck, spark, *_ = two_engines
    on_duckdb, on_spark = _relations(duck), _relations(spark)
    assert set(on_spark) == set(on_duckdb)
    assert len(on_duckdb) == 26 and sum(name.startswith("marts.") for name in on_duckdb) == 6
    # Every relation in the Spark run's file came from Spark: a table, also where DuckDB builds a view (staging).
    assert {kind for kind, _ in on_spark.values()} == {"BASE TABLE"}
    assert sum(kind == "VIEW" for kind, _ in on_duckdb.values()) == 9
    differences = {}
    for name in sorted(on_duckdb):
        assert on_spark[name][1] == on_duckdb[name][1], name  # the same columns, in order, with the same types
        problems = compare(read(str(duck), name), read(str(spark), name), rtol=1e-9, ignore=frozenset())
        if problems:
            differences[name] = problems
    assert differences == {}
    with duckdb.connect(str(spark), read_only=True) as con:
        assert con.sql("select count(*) from marts.account_outcomes").fetchall()[0][0] > 500


def test_the_planted_rows_come_out_as_duckdb_reads_them_on_both(two_engines):
    duck, spark, edges, _ = two_engines
    for warehouse in (duck, spark):
        with duckdb.connect(str(warehouse), read_only=True) as con:
            key = con.sql(
                "select account_id from intermediate.int_account_keys where match_key = ?", params=[edges["domain"]]
            ).fetchall()
            assert key == [(edges["company"],)]  # the dated company owns the domain, not its undated twin
            person = con.sql(
                "select account_id, resolution_method from intermediate.int_events_resolved where event_id = 'edge-3'"
            ).fetchall()
            assert person == [(edges["company"], "crm_person")]  # by the dated person with that e-mail
            first_day = con.sql(
                "select n_first_1d, n_in_window from marts.account_event_features "
                "where account_id = ? and event_name = 'edge_boundary'",
                params=[EDGE_DOMAIN],
            ).fetchall()
            assert first_day == [(1, 1)]  # 0.2 s inside the first day
            plan = con.sql(
                "select property_value from marts.account_property_features "
                "where account_id = ? and property_name = 'plan.name'",
                params=[EDGE_DOMAIN],
            ).fetchall()
            assert plan == [("pro",)]
            url = con.sql(
                "select property_value from marts.account_property_features "
                "where account_id = ? and property_name = '$current_url'",
                params=[EDGE_DOMAIN],
            ).fetchall()
            assert url == [("/a",)]


def test_discovery_on_sparks_relations_finds_the_same_signals(two_engines):
    duck, spark, *_ = two_engines
    on_duckdb, on_spark = read(str(duck), "beton.signals"), read(str(spark), "beton.signals")
    assert on_duckdb is not None and on_duckdb.height > 0
    assert compare(on_duckdb, on_spark, rtol=1e-9) == []
