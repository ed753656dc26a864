"""The warehouse side of each domain: read inputs, call `core`, write results.

One module per domain, named as in `core/` and `defs/`. Modules here may import `core`, `sources`,
`destinations`, `settings` and `warehouse`; never `defs` or the entry points.
"""
