"""Custom signals (`signals/*.yml`, `signals/*.sql`) and per-signal backtests (`beton.signal_backtests`)."""
