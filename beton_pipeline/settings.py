"""beton settings: `beton.yaml` (or the file named by `BETON_CONFIG`) validated into typed models.

Every setting has a documented default, so an empty file (or no file) is a valid configuration.
On demo data only, the demo's own playbook and experiments (`sources/demo_config/`) fill the sections
beton.yaml leaves empty; `BETON_CONFIG` names a file that is read alone (`load_settings`).
Secrets never live here: Slack, Attio, webhook and Postgres credentials come only from environment
variables (see README, "Configuration").

This is also the one place where settings become the configs of `core`: `Settings.feature_spec()`,
`discovery_config()`, `backtest_config()`, `health_config()`, `scoring_config()`, `lead_score_config()`
and `playbook_config()`. Store and defs code passes those objects on; nothing else reads settings
fields to build a core config.
"""

from __future__ import annotations

import os
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from beton_pipeline.sources import demo_config
from beton_pipeline.sources.connectors import TABLES_BY_SOURCE

if TYPE_CHECKING:  # the core configs are imported where they are built: core's modules load scipy and polars,
    # which every command that only reads settings (`beton --help`, `beton signals`, errors) would pay for.
    from beton_pipeline.core.backtest import BacktestConfig
    from beton_pipeline.core.candidates import FeatureSpec
    from beton_pipeline.core.discovery import DiscoveryConfig
    from beton_pipeline.core.monitoring import HealthConfig
    from beton_pipeline.core.playbooks import PlaybookConfig
    from beton_pipeline.core.scoring import ScoringConfig

PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""The repository root: `beton.yaml`, `dbt_project/` and the default `data/` folder live here."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RevenueSettings(_Strict):
    acv: float = Field(12_000.0, gt=0, description="Annual contract value used when an account's own ARR is unknown.")
    currency: str = Field(
        "usd", pattern=r"^[a-zA-Z]{3}$", description="ISO 4217 code of acv and of the ARR figures beton reports"
    )
    baseline_conversion: float | None = Field(
        None, gt=0, lt=1, description="Expected conversion rate; null means the observed base rate."
    )
    sales_cycle_days: int = Field(
        30, gt=0, description="your usual days from first touch to a closed deal; informational: no figure uses it yet"
    )
    sales_capacity: int | None = Field(
        None,
        ge=1,
        description=(
            "Accounts your sales team can work per month. The lead-score backtest qualifies sales_capacity × "
            "(test cohort months) accounts; null means the top 10% of test accounts."
        ),
    )


class WindowSettings(_Strict):
    observation_days: int = Field(14, gt=0, description="Days after an account's start whose behaviour may predict.")
    conversion_window_days: int = Field(
        60, gt=0, description="An account converts if it pays within this many days of its start."
    )
    holdout_fraction: float = Field(
        0.3, ge=0, lt=1, description="Share of the latest eligible cohorts kept back for the temporal holdout."
    )
    as_of: str | None = Field(
        None, description="ISO timestamp of the run's 'now'; null means the latest event in the data."
    )

    @field_validator("as_of")
    @classmethod
    def _iso_time(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not an ISO date or time, e.g. 2025-06-01 or 2025-06-01 00:00:00"
                ) from None
        return value

    @model_validator(mode="after")
    def _observation_fits(self) -> WindowSettings:
        if self.observation_days > self.conversion_window_days:
            raise ValueError("observation_days must not exceed conversion_window_days")
        return self


class ThresholdSettings(_Strict):
    min_sample: int = Field(30, ge=1, description="Minimum accounts with the signal before it can be enabled.")
    min_lift: float = Field(1.3, gt=0, description="Minimum lift (and lower CI bound above 1) to enable a signal.")
    confidence_level: float = Field(
        0.95,
        gt=0.5,
        lt=1,
        description="the coverage of every confidence interval beton reports (lift, rates, readouts)",
    )
    fdr_alpha: float = Field(0.05, gt=0, lt=1, description="Benjamini-Hochberg false-discovery rate.")


class PropertyFeature(_Strict):
    event: str
    property: str
    transform: Literal["none", "url_path"] = "none"


class DiscoverySettings(_Strict):
    count_thresholds: tuple[int, ...] | Literal["auto"] = Field(
        "auto",
        description="`auto`: thresholds from each event's distribution of counts (every small integer, then "
        "quantile cut points; README, 'Count thresholds'); or an explicit list such as [1, 2, 3, 5, 10].",
    )
    max_thresholds_per_event: int = Field(
        16, ge=1, description="With `auto` thresholds: the most thresholds tested per event and window."
    )
    first_n_days: tuple[int, ...] = Field(
        (1, 3, 7, 14), description="the early windows event counts are tried in: done N times in the first d days"
    )
    property_features: tuple[PropertyFeature, ...] = Field(
        (PropertyFeature(event="$pageview", property="$current_url", transform="url_path"),),
        description="event properties whose values are tried as signals (an event with a property value, N times)",
    )
    min_property_support: int = Field(
        20, ge=1, description="Accounts a property value needs before it becomes a candidate."
    )
    min_candidate_support: int = Field(10, ge=1, description="Accounts a candidate must fire for before it is tested.")
    intent_lookback_days: int = Field(
        90, gt=0, description="how many days before an account's start a buying signal still counts for it"
    )
    pair_top_k: int = Field(12, ge=0, description="Pairs (AND) are formed from this many strongest single candidates.")
    activity_strata: int = Field(
        10,
        ge=1,
        description="Activity quantile bands (of all events in a candidate's window, cut within each cohort "
        "month, each split to a narrow activity range) for the adjusted lift; 1 stratifies by cohort month only "
        "(README, 'Adjusted lift').",
    )
    excluded_events: tuple[str, ...] = Field(
        ("$identify", "$feature_flag_called"),
        description="events never tried as signals nor counted as activity (bookkeeping events, not behaviour)",
    )
    model_search_max_accounts: int | None = Field(
        20_000,
        ge=1_000,
        description="The lead-score model chooses its penalty C by cross-validation on a stratified random "
        "subsample of this many training accounts (more when model_search_min_per_outcome needs them), then fits on "
        "all of them (README, 'Lead-score model'); "
        "null: cross-validate on all of them.",
    )
    model_search_min_per_outcome: int = Field(
        1_000,
        ge=1,
        description="The subsample for the model's penalty search is enlarged to hold at least this many accounts of "
        "the rarer outcome (conversions, usually).",
    )

    @model_validator(mode="after")
    def _sorted(self) -> DiscoverySettings:
        if self.count_thresholds != "auto" and (not self.count_thresholds or min(self.count_thresholds) < 1):
            raise ValueError("count_thresholds must be `auto` or a list of positive integers")
        if not self.first_n_days or min(self.first_n_days) < 1:
            raise ValueError("first_n_days must be positive integers")
        return self


class MonitoringSettings(_Strict):
    start_date: str = Field(
        "2024-01-01", pattern=r"^\d{4}-\d{2}-\d{2}$", description="First day of the daily partitions (health, scores)."
    )

    @field_validator("start_date")
    @classmethod
    def _real_day(cls, value: str) -> str:
        try:
            date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a day of the calendar") from None
        return value

    window_days: int = Field(90, gt=0, description="Rolling window of outcome closures each day's health looks at.")
    alpha: float = Field(0.05, gt=0, lt=1, description="False-alarm probability per signal per year of daily looks.")
    looks_per_year: int = Field(365, ge=1, description="Daily looks a year the false-alarm budget alpha covers.")
    min_fired: int = Field(
        30, ge=1, description="accounts with and without the signal a health window needs before it is judged"
    )
    min_conversions: int = Field(
        10, ge=1, description="conversions a health window needs before it is judged (else insufficient_data)"
    )
    method: Literal["bonferroni", "sequential", "risk_set"] = Field(
        "risk_set",
        description="Health rule: bonferroni (rolling windows, each look at alpha / looks_per_year), sequential "
        "(Shiryaev–Roberts on each day's closed outcomes) or risk_set (Shiryaev–Roberts on each day's conversions "
        "among the accounts at risk, by age band); each flags a stable signal in at most alpha of its years "
        "(risk_set: as measured by benchmarks/health_simulation.py).",
    )
    degraded_effect_share: float = Field(
        0.5, ge=0, lt=1, description="Sequential rule: the shrunk alternative keeps this share of the log odds ratio."
    )


class ScoringSettings(_Strict):
    half_life_days: float = Field(
        14.0, gt=0, description="A signal's contribution halves every this many days after it fired."
    )
    calibration_ages_days: tuple[int, ...] = Field(
        (1, 3, 7, 14, 21, 30, 45),
        description="the account ages (days since start) at which past accounts are observed to calibrate the score",
    )
    lead_threshold: float = Field(
        0.15, gt=0, lt=1, description="Accounts in play scoring at least this are surfaced as leads."
    )
    top_contributions: int = Field(3, ge=1, description="signals listed as the reasons behind each score")
    degrading_weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description="A signal's weight on a day its health is degrading is multiplied by this (broken: 0).",
    )
    max_rows_per_batch: int = Field(
        1_000_000,
        ge=1,
        description=(
            "account_scores scores the days of a run in batches of consecutive days holding at most this many "
            "(account, day) rows in play (a single day holding more is a batch of its own), writing each batch "
            "before the next: the step's peak memory follows this (and DuckDB's memory_limit), not the number of "
            "days or accounts. "
            "Lower it on a small machine; the output does not depend on it."
        ),
    )


class FreshnessSettings(_Strict):
    max_lag_days: dict[str, float | None] = Field(
        default_factory=dict,
        description=(
            "Per source table: days its newest row may trail the as-of (latest event or windows.as_of); "
            "null = no check. Unlisted tables keep their contract default by role (TableSpec.role): events 3; "
            "other activity tables (invoices, deal stage changes, intent signals) 35; entity tables (customers, "
            "subscriptions, companies, people, deals) no check."
        ),
    )
    max_age_days: float | None = Field(
        None,
        gt=0,
        description="Days the newest event may be older than the wall clock; null = off (production: e.g. 2).",
    )

    @field_validator("max_lag_days")
    @classmethod
    def _known_tables(cls, value: dict[str, float | None]) -> dict[str, float | None]:
        from beton_pipeline.sources.contract import TABLES_BY_NAME

        unknown = sorted(set(value) - set(TABLES_BY_NAME))
        if unknown:
            raise ValueError(f"unknown table(s) {', '.join(unknown)}; expected one of {', '.join(TABLES_BY_NAME)}")
        if any(v is not None and v < 0 for v in value.values()):
            raise ValueError("days must not be negative")
        return value


class IngestSettings(_Strict):
    max_quarantine_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description=(
            "Largest share of a required table's rows read that may be quarantined (0.05 = 5 %); over it the "
            "run fails with the table, the counts and this setting (optional tables only warn). 1 = no limit."
        ),
    )
    max_chunk_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1,
        description=(
            "A table's files are read in chunks of consecutive files of at most this many bytes on disk (a larger "
            "file is a chunk of its own; default 256 MiB): DuckDB holds one chunk's rows at a time, so what it "
            "spills to its temp directory stays bounded by the chunk, not the export. The rows loaded and "
            "quarantined do not depend on it (`sources.ingest.ingest_table`)."
        ),
    )
    incremental: bool = Field(
        True,
        description=(
            "Read only the files that are new since the last ingest when that gives the same table as reading "
            "them all (the files read before unchanged, the new ones sorting after them in path order: "
            "PostHog's batch-export parts do), else every file. Keeps the files read and a 16-byte hash per row "
            "kept and per row loaded in the warehouse (schema `_beton_state`; ~0.3 GB at 10M events). "
            "false: every ingest reads every file and nothing is kept (`sources.ingest.plan_ingest`)."
        ),
    )


def _http_url(value: str) -> str:
    """A connector's base URL: http(s), without a trailing slash."""
    if not value.startswith(("https://", "http://")):
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value.rstrip("/")


class _ConnectorSettings(_Strict):
    enabled: bool = Field(False, description="Pull this source on every run (its key from its environment variable).")
    timeout_seconds: float = Field(30.0, gt=0, description="Seconds one API request may take before it is retried.")
    max_attempts: int = Field(5, ge=1, description="Attempts per request (429, 5xx, timeouts) before the pull fails.")
    max_wait_seconds: float = Field(60.0, ge=0, description="Longest wait between attempts (a Retry-After is capped).")


class PostHogSourceSettings(_ConnectorSettings):
    host: str = Field("https://us.posthog.com", description="PostHog's API host (EU: https://eu.posthog.com).")
    project_id: str = Field("", description="The project's id (PostHog: Settings → Project → Project ID).")
    page_size: int = Field(10_000, ge=1, description="Events per query page (keyset pagination on timestamp, uuid).")
    overlap_minutes: float = Field(
        60.0, ge=0, description="Each pull reads again this much before the newest event landed, for late events."
    )
    start: str | None = Field(None, description="ISO time of the first pull's earliest event (default: 400 days ago).")
    timeout_seconds: float = Field(60.0, gt=0, description="Seconds one query may take before it is retried.")
    max_pages: int = Field(500, ge=1, description="Pages one pull reads at most; a longer history takes several pulls.")

    class BatchExport(_Strict):
        """A PostHog batch export (S3 destination, events model) read instead of the query API."""

        bucket: str = Field(
            ..., pattern=r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$", description="The export's bucket (3 to 63 characters)."
        )
        prefix: str = Field("", description="The export's key prefix up to its first {variable}, e.g. posthog/events/.")
        endpoint_url: str | None = Field(
            None, description="An S3-compatible store's endpoint (R2, MinIO, GCS); None: AWS."
        )
        region: str = Field("us-east-1", description="The bucket's region (R2: auto).")
        max_objects: int = Field(200, ge=1, description="Objects one pull reads at most, oldest first.")
        format: Literal["auto", "parquet", "jsonl"] = Field("auto", description="Which objects are read (auto: both).")
        top_up: bool = Field(False, description="Then query PostHog for the events after the newest exported one.")

        _url = field_validator("endpoint_url")(lambda value: value if value is None else _http_url(value))

        @field_validator("prefix")
        @classmethod
        def _plain_prefix(cls, value: str) -> str:
            """The listed prefix is fixed text: no leading slash (S3 keys have none), no {variable} of PostHog's."""
            if value.startswith("/"):
                raise ValueError(f"prefix {value!r} starts with '/': S3 keys do not, write it without")
            if "{" in value:
                raise ValueError(
                    f"prefix {value!r} holds a {{variable}}: give the part of the export's key prefix before the first one"
                )
            return value

    batch_export: BatchExport | None = Field(None, description="Read the events from a batch export on S3 (None: no).")

    _url = field_validator("host")(_http_url)

    @field_validator("start", mode="before")
    @classmethod
    def _iso_start(cls, value):
        """`start: 2025-01-01` unquoted is a YAML date: take it as the ISO text it was written as."""
        return value.isoformat() if hasattr(value, "isoformat") else value


class AttioSourceSettings(_ConnectorSettings):
    api_base: str = Field("https://api.attio.com", description="Attio's API address (a proxy's, if you use one)")
    page_size: int = Field(500, ge=1, le=500, description="Records per query page (limit/offset; Attio's default 500).")
    deal_history: bool = Field(True, description="Pull each deal's stage history (one call per new or moved deal).")
    max_history_calls: int = Field(2000, ge=0, description="Stage-history calls per pull; the rest wait a pull.")
    won_stages: tuple[str, ...] = Field(("Won", "Won 🎉", "Closed won"), description="Stages meaning won (any case).")
    lost_stages: tuple[str, ...] = Field(("Lost", "Closed lost"), description="Stages meaning lost (any case).")

    _url = field_validator("api_base")(_http_url)


class StripeSourceSettings(_ConnectorSettings):
    api_base: str = Field("https://api.stripe.com", description="Stripe's API address (a proxy's, if you use one)")
    page_size: int = Field(100, ge=1, le=100, description="Objects per list page (Stripe's maximum is 100).")

    _url = field_validator("api_base")(_http_url)


class SourcesSettings(_Strict):
    """Connectors: which vendors' APIs are pulled into the landing folder, and how (README, "Connectors")."""

    landing_dir: str | None = Field(
        None, description="Where pulled data lands, one source directory per connector (default: data/pulled)."
    )
    posthog: PostHogSourceSettings = PostHogSourceSettings()
    attio: AttioSourceSettings = AttioSourceSettings()
    stripe: StripeSourceSettings = StripeSourceSettings()

    @model_validator(mode="after")
    def _posthog_project(self) -> SourcesSettings:
        export = self.posthog.batch_export
        queries = export is None or export.top_up  # a batch export alone never asks PostHog's query API
        if self.posthog.enabled and queries and not self.posthog.project_id.strip():
            raise ValueError(
                "posthog.project_id is required when the PostHog connector queries PostHog "
                "(no batch_export, or batch_export.top_up: true)"
            )
        return self

    @property
    def enabled(self) -> tuple[str, ...]:
        """The enabled connectors, in `TABLES_BY_SOURCE` order."""
        return tuple(name for name in TABLES_BY_SOURCE if getattr(self, name).enabled)

    def pulled_tables(self) -> dict[str, str]:
        """Contract table → the enabled connector that fills it (Attio's stage history only with `deal_history`:
        without it the table is read from the source directory, not from what an earlier pull left)."""
        return {
            table: name
            for name in self.enabled
            for table in TABLES_BY_SOURCE[name]
            if not (table == "crm_deal_stage_changes" and not self.attio.deal_history)
        }

    def landing(self) -> Path:
        """The landing folder (relative settings resolve against the project root)."""
        path = Path(self.landing_dir) if self.landing_dir else PROJECT_ROOT / "data" / "pulled"
        return (path if path.is_absolute() else PROJECT_ROOT / path).resolve()


ENGINES = ("duckdb", "spark")
"""Where the dbt models run (`warehouse.engine`); `ENGINE_VARIABLE` overrides the setting."""

ENGINE_VARIABLE = "BETON_ENGINE"


class WarehouseSettings(_Strict):
    engine: Literal["duckdb", "spark"] = Field(
        "duckdb",
        description=(
            "where the dbt models run: duckdb (in the warehouse file) or spark (the same models through dbt-spark, "
            "`pip install beton[spark]` and Java 17; every relation they build is then copied into the warehouse "
            "file, which the rest of beton reads either way). BETON_ENGINE overrides it."
        ),
    )


class DemoSettings(_Strict):
    accounts: int = Field(8000, ge=50, description="accounts the demo data set simulates")
    seed: int = Field(7, description="the demo's random seed: the same seed gives the same data")


class SignalsSettings(_Strict):
    strict: bool = Field(
        False,
        description=(
            "false: a custom signal file that cannot be used (invalid YAML or SQL, an unknown key, or a name this "
            "data does not have) is reported and left out, and the other signals and discovery run; "
            "true: any such file fails the run."
        ),
    )


class ScheduleSettings(_Strict):
    cron: str = Field("0 6 * * *", description="when the daily run starts (cron syntax)")
    timezone: str = Field("UTC", description="the time zone of cron (an IANA name, e.g. Europe/Berlin)")

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from croniter import croniter  # Dagster's own cron parser (a dependency of dagster)

        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a cron schedule of five fields (minute hour day month weekday)")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone name (an IANA name such as UTC or Europe/Berlin)") from None
        return value


class AppSettings(_Strict):
    """`beton serve`: where its pages are reached from elsewhere (README, "The pages")."""

    base_url: str | None = Field(
        None,
        description=(
            "the address people open the pages at, e.g. https://beton.example.com (behind your proxy) or "
            "http://127.0.0.1:8765; when set, Slack messages and webhook events link each account's and signal's "
            "page, and Dagster's asset metadata links the signals"
        ),
    )

    @field_validator("base_url")
    @classmethod
    def _http(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be http(s)://host[:port][/path], got {url!r}")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("must be a plain address: no user:password@, ?query or #fragment")
        return url.rstrip("/")


class Settings(_Strict):
    revenue: RevenueSettings = RevenueSettings()
    windows: WindowSettings = WindowSettings()
    thresholds: ThresholdSettings = ThresholdSettings()
    discovery: DiscoverySettings = DiscoverySettings()
    freshness: FreshnessSettings = FreshnessSettings()
    ingest: IngestSettings = IngestSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    scoring: ScoringSettings = ScoringSettings()
    demo: DemoSettings = DemoSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    signals: SignalsSettings = SignalsSettings()
    sources: SourcesSettings = SourcesSettings()
    app: AppSettings = AppSettings()
    warehouse: WarehouseSettings = WarehouseSettings()
    playbooks: tuple[dict, ...] = ()
    experiments: tuple[dict, ...] = ()
    destinations: dict = {}

    @model_validator(mode="after")
    def _playbooks_valid(self) -> Settings:
        """Playbooks, experiments and destinations are checked when settings load (errors name the field)."""
        self.playbook_config()
        return self

    @property
    def feature_windows(self) -> tuple[int, ...]:
        """First-N-day windows actually used: those within the observation window, plus the window itself."""
        days = {d for d in self.discovery.first_n_days if d <= self.windows.observation_days}
        days.add(self.windows.observation_days)
        return tuple(sorted(days))

    # --- core configs, built here and nowhere else ------------------------------------------------
    def feature_spec(self) -> FeatureSpec:
        """How candidates are built (discovery, custom-signal backtests and the lead-score model share it)."""
        from beton_pipeline.core.candidates import FeatureSpec

        return FeatureSpec(
            windows=self.feature_windows,
            count_thresholds=self.discovery.count_thresholds,
            observation_days=self.windows.observation_days,
            intent_lookback_days=self.discovery.intent_lookback_days,
            excluded_events=self.discovery.excluded_events,
        )

    def discovery_config(self) -> DiscoveryConfig:
        """The rule candidates are tested and recommended by (custom signals use the same)."""
        from beton_pipeline.core.discovery import DiscoveryConfig

        return DiscoveryConfig(
            confidence_level=self.thresholds.confidence_level,
            fdr_alpha=self.thresholds.fdr_alpha,
            min_sample=self.thresholds.min_sample,
            min_lift=self.thresholds.min_lift,
            min_candidate_support=self.discovery.min_candidate_support,
            min_property_support=self.discovery.min_property_support,
            pair_top_k=self.discovery.pair_top_k,
            acv=self.revenue.acv,
            activity_strata=self.discovery.activity_strata,
            max_thresholds_per_event=(
                self.discovery.max_thresholds_per_event if self.discovery.count_thresholds == "auto" else None
            ),
        )

    def backtest_config(self) -> BacktestConfig:
        """Backtest settings: the CI level and ACV from beton.yaml, the verdict rule's defaults."""
        from beton_pipeline.core.backtest import BacktestConfig

        return BacktestConfig(confidence_level=self.thresholds.confidence_level, acv=self.revenue.acv)

    def health_config(self) -> HealthConfig:
        """Daily signal health: alpha spending, minimum counts, and the lift a healthy signal keeps."""
        from beton_pipeline.core.monitoring import HealthConfig

        m = self.monitoring
        return HealthConfig(
            alpha=m.alpha,
            looks_per_year=m.looks_per_year,
            min_fired=m.min_fired,
            min_conversions=m.min_conversions,
            min_lift=self.thresholds.min_lift,
            method=m.method,
            degraded_effect_share=m.degraded_effect_share,
        )

    def scoring_config(self) -> ScoringConfig:
        """Live account scores: decay, calibration ages, the lead threshold and contributions shown."""
        from beton_pipeline.core.scoring import ScoringConfig

        s = self.scoring
        return ScoringConfig(
            half_life_days=s.half_life_days,
            calibration_ages_days=s.calibration_ages_days,
            lead_threshold=s.lead_threshold,
            top_contributions=s.top_contributions,
            degrading_weight=s.degrading_weight,
            max_rows_per_batch=s.max_rows_per_batch,
        )

    def lead_score_config(self):  # -> core.model.ModelConfig (imported here: core.model loads scikit-learn)
        """Lead-score model training; without `revenue.sales_capacity` k is the top 10% of test accounts."""
        from beton_pipeline.core.model import ModelConfig

        return ModelConfig(
            min_candidate_support=self.discovery.min_candidate_support,
            min_property_support=self.discovery.min_property_support,
            holdout_fraction=self.windows.holdout_fraction,
            sales_capacity=self.revenue.sales_capacity,
            confidence_level=self.thresholds.confidence_level,
            search_max_accounts=self.discovery.model_search_max_accounts,
            search_min_per_class=self.discovery.model_search_min_per_outcome,
        )

    def playbook_config(self) -> PlaybookConfig:
        """Playbooks, experiments and destinations, parsed and checked."""
        from beton_pipeline.core.playbooks import parse_playbook_config

        return parse_playbook_config(self.playbooks, self.experiments, self.destinations, self.app.base_url)

    def connector_config(self, name: str):
        """The config of connector `name` (`sources.<name>` in beton.yaml, every setting but `enabled`, whose names
        the config's fields share), for its dlt source."""
        from beton_pipeline.sources.connectors.registry import config_class

        values = getattr(self.sources, name).model_dump(exclude={"enabled"})
        if name == "posthog" and values["batch_export"] is not None:  # the one nested section: its own dataclass
            from beton_pipeline.sources.connectors.posthog import BatchExportConfig

            values["batch_export"] = BatchExportConfig(**values["batch_export"])
        return config_class(name)(**values)

    def dbt_vars(self) -> dict:
        """The subset of settings the dbt models read (`--vars`)."""
        return {
            "observation_days": self.windows.observation_days,
            "conversion_window_days": self.windows.conversion_window_days,
            "feature_windows_days": list(self.feature_windows),
            "intent_lookback_days": self.discovery.intent_lookback_days,
            "as_of": self.windows.as_of,
            "property_features": [p.model_dump() for p in self.discovery.property_features],
        }


class SettingsError(ValueError):
    """beton.yaml could not be read or is invalid; the message names the file and the field."""


def config_path() -> Path:
    """`BETON_CONFIG` if set, else `beton.yaml` at the project root."""
    return Path(os.environ.get("BETON_CONFIG") or PROJECT_ROOT / "beton.yaml")


def load_settings(path: Path | str | None = None) -> Settings:
    """Read and validate settings (the file and precedence: `settings_mapping`; `BETON_ENGINE` over the file's
    `warehouse.engine`)."""
    raw, source = settings_mapping(path)
    return _validate(with_engine_override(raw), source)


def with_engine_override(raw: dict) -> dict:
    """`raw` with `warehouse.engine` set from `BETON_ENGINE` when that is set (refused unless it names an engine)."""
    engine = os.environ.get(ENGINE_VARIABLE)
    if not engine:
        return raw
    if engine not in ENGINES:
        raise SettingsError(
            f"{ENGINE_VARIABLE}={engine!r} is not an engine beton runs its models on: use {' or '.join(ENGINES)}"
        )
    section = raw.get("warehouse") if isinstance(raw.get("warehouse"), dict) else {}
    return {**raw, "warehouse": {**section, "engine": engine}}


def settings_mapping(path: Path | str | None = None, demo_data: bool | None = None) -> tuple[dict, Path]:
    """The raw mapping `load_settings` validates, and the file errors name. Precedence, simplest first:

    1. an explicit file (`path`, else `BETON_CONFIG`) is read alone; it must exist;
    2. else `beton.yaml` at the project root (missing: all defaults) and, on demo data only
       (`demo_data`, by default `on_demo_data()`), the demo's settings fill the top-level sections it
       leaves empty or out (`merge_demo_settings`).
    """
    explicit = Path(path) if path else (Path(os.environ["BETON_CONFIG"]) if os.environ.get("BETON_CONFIG") else None)
    if explicit is not None:
        if not explicit.exists():
            raise SettingsError(f"{explicit}: settings file not found (BETON_CONFIG)")
        return read_settings_file(explicit), explicit
    project = PROJECT_ROOT / "beton.yaml"
    raw = read_settings_file(project) if project.exists() else {}
    if on_demo_data(raw) if demo_data is None else demo_data:
        raw = merge_demo_settings(raw, read_settings_file(demo_config.SETTINGS_FILE))
    return raw, project


def read_settings_file(path: Path) -> dict:
    """A settings file's top-level mapping (an empty file is `{}`)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot be read: {exc}") from None
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}: expected a mapping at the top level")
    return raw


def merge_demo_settings(project: dict, demo: dict) -> dict:
    """The project's sections win wherever they say something; the demo's fill sections left empty or out."""
    return {**demo, **{key: value for key, value in project.items() if value not in (None, [], {})}}


def _validate(raw: dict, path: Path) -> Settings:
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise SettingsError(f"{path}: {problems}") from None


def on_demo_data(raw: dict | None = None) -> bool:
    """Whether this run reads demo data: a folder `beton demo` wrote, or `BETON_SOURCE_DIR` unset (the embedded
    demo) and no connector enabled in the settings (`raw`: the settings mapping, else the settings file's)."""
    directory = source_dir()
    if directory is not None:
        return demo_config.is_demo_export(directory)
    if raw is None:
        path = config_path()
        raw = read_settings_file(path) if path.exists() else {}
    sources = raw.get("sources")
    return not (isinstance(sources, dict) and any(isinstance(c, dict) and c.get("enabled") for c in sources.values()))


def signal_dirs() -> list[Path]:
    """The folders custom signals are loaded from, in order: `BETON_SIGNALS_DIR` alone if set; else the
    project's `signals/`, then on demo data the demo's example signals."""
    explicit = os.environ.get("BETON_SIGNALS_DIR")
    if explicit:
        return [Path(explicit).resolve()]
    dirs = [(PROJECT_ROOT / "signals").resolve()]
    if on_demo_data():
        dirs.append(demo_config.SIGNALS_DIR)
    return dirs


def warehouse_path() -> Path:
    """`BETON_WAREHOUSE` if set, else `data/warehouse.duckdb` under the project root."""
    return Path(os.environ.get("BETON_WAREHOUSE") or PROJECT_ROOT / "data" / "warehouse.duckdb").resolve()


def spark_dir(warehouse: Path) -> Path:
    """Spark's folder for the builds into `warehouse` (engine spark): `BETON_SPARK_DIR` if set, else
    `<warehouse>.spark` beside the file. It holds the raw tables' Parquet, Spark's tables and its metastore
    (Derby: one process at a time, as the warehouse pool runs one build at a time), kept between runs so that a
    build of some models finds the others. Deleting it costs the next build nothing but a full one."""
    value = os.environ.get("BETON_SPARK_DIR")
    return Path(value).resolve() if value else Path(f"{Path(warehouse).resolve()}.spark")


def source_dir() -> Path | None:
    """`BETON_SOURCE_DIR` if set; None means the demo data."""
    value = os.environ.get("BETON_SOURCE_DIR")
    return Path(value).resolve() if value else None


def demo_dir() -> Path:
    """Where the embedded demo source directory is generated."""
    return (PROJECT_ROOT / "data" / "demo").resolve()


# ------------------------------------------------------------------------------------------------
# Writing settings back (a command that records what it set up, e.g. `beton destinations attio fields --apply`)
# ------------------------------------------------------------------------------------------------
ROUND_TRIP_INDENTS = ((2, 4, 2), (2, 2, 0), (4, 4, 2), (4, 6, 4))
"""(mapping, sequence, offset) indents tried, in order, to rewrite a settings file as its author wrote it."""


def _round_trip_yaml(text: str):
    """A ruamel round-trip YAML for `text` and its data: the first indent style in ROUND_TRIP_INDENTS that
    reproduces `text` unchanged (else the first), nulls written as `null`, lines never folded."""
    from ruamel.yaml import YAML
    from ruamel.yaml.representer import RoundTripRepresenter

    class Representer(RoundTripRepresenter):  # a subclass: ruamel's add_representer would change every YAML()
        pass

    Representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))

    def make(indent):
        yaml = YAML()
        yaml.Representer = Representer
        yaml.preserve_quotes = True
        yaml.width = 4096
        yaml.indent(mapping=indent[0], sequence=indent[1], offset=indent[2])
        return yaml

    for indent in ROUND_TRIP_INDENTS:
        yaml = make(indent)
        data = yaml.load(text)
        if _dump(yaml, data) == text:
            return yaml, data
    yaml = make(ROUND_TRIP_INDENTS[0])
    return yaml, yaml.load(text)


def _dump(yaml, data) -> str:
    import io

    buffer = io.StringIO()
    yaml.dump(data, buffer)
    return buffer.getvalue()


def with_attio_mapping(text: str, object_slug: str, fields: dict[str, str], keep_fields: bool) -> str:
    """`text` (a settings file) with `destinations.attio` set to `object_slug` and `fields` (field → slug),
    everything else, comments and order included, as it was. `keep_fields`: fields already mapped and not in
    `fields` stay (else the section's fields are replaced)."""
    from ruamel.yaml.comments import CommentedMap

    yaml, data = _round_trip_yaml(text)
    if data is None:
        data = CommentedMap()
    section = data.get("destinations")
    if not isinstance(section, dict):
        data["destinations"] = section = CommentedMap()
    attio = section.get("attio")
    if not isinstance(attio, dict):
        section["attio"] = attio = CommentedMap()
    attio["object"] = object_slug
    mapped = attio.get("fields")
    if not (keep_fields and isinstance(mapped, dict)):
        attio["fields"] = mapped = CommentedMap()
    for field, slug in fields.items():
        mapped[field] = slug
    return _dump(yaml, data)


def _checked_temporary(path: Path, text: str) -> Path:
    """`text` written beside `path` (same mode) and loaded with `load_settings`; the temporary file's path, or
    SettingsError (the file removed) naming `path` when the settings would not load."""
    import shutil

    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        if path.exists():
            shutil.copymode(path, temporary)
        load_settings(temporary)
    except SettingsError as exc:
        temporary.unlink(missing_ok=True)
        raise SettingsError(
            f"{path} was not changed: with the change it would not load:\n{str(exc).replace(str(temporary), str(path))}"
        ) from None
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise SettingsError(f"{path}: cannot be written: {exc.strerror or exc}") from None
    return temporary


def check_settings_text(path: Path, text: str) -> None:
    """SettingsError unless `text` would load as the settings file `path` and can be written beside it."""
    _checked_temporary(path, text).unlink(missing_ok=True)


def write_settings_file(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically, only if `load_settings` accepts it (keeping the file's mode);
    SettingsError (the file unchanged) otherwise."""
    temporary = _checked_temporary(path, text)
    try:
        os.replace(temporary, path)
    except OSError as exc:
        raise SettingsError(f"{path}: cannot be written: {exc.strerror or exc}") from None
    finally:
        temporary.unlink(missing_ok=True)


def attio_mapping_text(path: Path, object_slug: str, fields: dict[str, str], keep_fields: bool) -> str:
    """The settings file `path` (none: empty) with `destinations.attio` recorded (`with_attio_mapping`);
    SettingsError when the file cannot be read back as YAML with its comments (e.g. a key given twice)."""
    from ruamel.yaml.error import YAMLError

    text = path.read_text(encoding="utf-8") if path.exists() else ""
    try:
        return with_attio_mapping(text, object_slug, fields, keep_fields)
    except YAMLError as exc:
        raise SettingsError(f"{path}: cannot be rewritten keeping its comments: {' '.join(str(exc).split())}") from None


def settings_change_text(path: Path, changes: dict[str, object]) -> str:
    """The settings file `path` (none: empty) with each setting of `changes` (a dotted path such as
    `thresholds.min_lift` → a scalar or a list of scalars) set, every other line, comment and quote as it was;
    a list is written in flow style (`[1, 3, 7]`), a string quoted when YAML would read it as something else.
    Sections on the way are created when missing or null. SettingsError when the file cannot be read back with
    its comments, or a section on the way is not a mapping. Nothing is validated here: `write_settings_file` does."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.error import YAMLError
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString, ScalarString

    def scalar(value: object, old: object) -> object:
        if not isinstance(value, str):
            return value
        if isinstance(old, ScalarString):  # written quoted before: keep its quotes
            return type(old)(value)
        try:  # plain only when YAML reads the text back as this same string
            plain = yaml.safe_load(value) == value
        except (yaml.YAMLError, ValueError):  # `*x`, `[a`, `%YAML`, `2099-99-99` (read as a bad date)
            plain = False
        return value if plain else DoubleQuotedScalarString(value)

    text = path.read_text(encoding="utf-8") if path.exists() else ""
    try:
        round_trip, data = _round_trip_yaml(text)
    except YAMLError as exc:
        raise SettingsError(f"{path}: cannot be rewritten keeping its comments: {' '.join(str(exc).split())}") from None
    if data is None:
        data = CommentedMap()
    for dotted, value in changes.items():
        *sections, key = dotted.split(".")
        node, tail = data, None
        for i, name in enumerate(sections):
            child = node.get(name)
            if child is None:
                tail = tail or (_trailing_comment(node) if name not in node else None)
                node[name] = child = CommentedMap()
            elif not isinstance(child, dict):
                raise SettingsError(f"{path}: {'.'.join(sections[: i + 1])} is not a mapping; {dotted} cannot be set")
            node = child
        old = node.get(key)
        if isinstance(value, list | tuple):
            new = CommentedSeq(scalar(v, None) for v in value)
            new.fa.set_flow_style()
        else:
            new = scalar(value, old)
        if key not in node:
            tail = tail or _trailing_comment(node)
        node[key] = new
        if tail is not None:
            node.ca.items[key] = [None, None, tail, None]
    return _dump(round_trip, data)


def _trailing_comment(node):
    """The blank lines and comments after the last line of the round-trip mapping `node` (ruamel keeps them on its
    last entry, or on a nested mapping's last entry), taken off it as a comment token for the line appended to it:
    the new line stays with its section instead of after the blank line that closes it. None when there are none."""
    from ruamel.yaml.tokens import CommentToken

    owner = node
    while len(owner):
        last = list(owner)[-1]
        if last in owner.ca.items or not (isinstance(owner[last], dict) and len(owner[last])):
            break
        owner = owner[last]
    token = owner.ca.items.get(last, [None] * 4)[2] if len(owner) else None
    if token is None:
        return None
    line, _, rest = token.value.partition("\n")
    if not rest:
        return None
    token.value = line + "\n"
    return CommentToken("\n" + rest, token.start_mark, None)
