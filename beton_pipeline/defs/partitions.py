"""Partitions shared across domains.

* `cohort_months` (dynamic): `beton run` and the cohort sensor add the months (`YYYY-MM`) that have
  eligible accounts, so a new month adds one partition.

The daily partitions of signal health and scores depend on the settings and are built when the
definitions load: `defs/monitoring/partitions.py`.
"""

import dagster as dg

cohort_months = dg.DynamicPartitionsDefinition(name="cohort_months")
