"""`make bench`: beton against the floor, the peer's method and an analyst's pandas (BENCHMARKS.md)."""
