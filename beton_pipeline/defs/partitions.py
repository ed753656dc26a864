"""Partitions, defined once. Cohort months are dynamic: `beton run` and the cohort sensor add the
months (`YYYY-MM`) that have eligible accounts, so a new month adds one partition."""

import dagster as dg

cohort_months = dg.DynamicPartitionsDefinition(name="cohort_months")
