"""The `signals` asset's metadata table: with `app.base_url`, each signal links its page in `beton serve`."""

from __future__ import annotations

import polars as pl

from beton_pipeline.defs.signals.assets import signals_markdown


def _signals() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "signal_id": ["sig_a/1", "sig_b"],
            "definition": ["`invited` >= 3", "industry = Fintech"],
            "recommendation": ["enable", "review"],
            "recommendation_order": [0, 1],
            "is_family_best": [True, True],
            "lift": [2.0, 1.5],
            "lift_ci_low": [1.5, 1.1],
            "lift_ci_high": [2.6, 2.0],
            "n_with": [120, 80],
            "q_value": [0.001, 0.04],
            "holdout_lift": [1.9, None],
        }
    )


def test_each_signal_links_its_page_only_when_the_app_has_an_address():
    linked = signals_markdown(_signals(), app_base_url="https://beton.example.com").splitlines()
    assert linked[0].endswith("| page |")
    assert linked[2].endswith("| [sig_a/1](https://beton.example.com/signals/sig_a%2F1) |")
    assert linked[3].endswith("| [sig_b](https://beton.example.com/signals/sig_b) |")
    plain = signals_markdown(_signals()).splitlines()
    assert "page" not in plain[0] and "https://" not in "\n".join(plain)
