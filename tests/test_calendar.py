"""Calendars: bars per year measured from the market, one resolved number per run, rf 0."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rl_trading import metrics as m
from rl_trading.config import load_config, periods_per_year_of, resolve_calendar
from rl_trading.data import read_bars, synthetic_market
from rl_trading.errors import ConfigError


@pytest.mark.parametrize(
    ("name", "expected", "rel"),
    [
        ("msft_1d", 252, 0.02),
        ("btcusd_30m", 17_520, 0.01),
        ("eurusd_1h", 6_200, 0.03),
        ("msft_1m", 97_000, 0.03),
    ],
)
def test_auto_calendar_on_the_shared_files(market_dir, name, expected, rel):
    bars = read_bars(market_dir / f"{name}.csv.gz")
    cfg = load_config(overrides=["data.calendar=auto"])
    assert periods_per_year_of(cfg, {"X": bars}) == pytest.approx(expected, rel=rel)


def test_fixed_calendars_and_override():
    cfg = load_config(overrides=["data.timeframe=1d", "data.calendar=equity"])
    assert periods_per_year_of(cfg) == 252
    cfg = load_config(overrides=["data.timeframe=1h", "data.calendar=fx"])
    assert periods_per_year_of(cfg) == 6_240
    cfg = load_config(overrides=["data.timeframe=30m", "data.calendar=crypto"])
    assert periods_per_year_of(cfg) == 17_520
    cfg = load_config(overrides=["data.calendar=crypto", "data.periods_per_year=1000"])
    assert periods_per_year_of(cfg) == 1000
    with pytest.raises(ConfigError, match="calendar=auto"):
        periods_per_year_of(load_config(overrides=["data.calendar=auto"]), None)
    with pytest.raises(ConfigError):
        load_config(overrides=["data.calendar=lunar"])


def test_one_resolved_number_flows_to_env_validation_and_report():
    """Weekday-only hourly bars: auto gives ~6,260, and the env's reward annualisation, the
    validation factory and a backtest report all use that number, not the 24h constant."""
    from envs import HierarchicalTradingEnv
    from rl_trading.evaluation.backtest import backtest
    from rl_trading.training.env_bridge import hierarchical_factory

    raw = synthetic_market(["AAA", "BBB"], n_bars=2_400, seed=5, timeframe="1h")
    keep = raw["AAA"].index.day_of_week < 5
    bars = {s: f[keep] for s, f in raw.items()}
    cfg = load_config(overrides=["data.timeframe=1h", "train.window_size=8", "env.risk_window=20"])
    train = {s: f.iloc[:1_000] for s, f in bars.items()}
    test = {s: f.iloc[1_000:] for s, f in bars.items()}
    pinned = resolve_calendar(cfg, train)
    ppy = pinned.data.periods_per_year
    assert ppy == pytest.approx(m.measure_periods_per_year(train["AAA"].index))
    assert 5_500 < ppy < 6_600 and ppy != m.periods_per_year("1h")
    env = HierarchicalTradingEnv(pinned, bars=test, mode="joint", eval_mode=True)
    assert env.periods_per_year == ppy
    factory = hierarchical_factory(cfg, train, test)
    assert factory.periods_per_year == ppy
    res = backtest(None, test, cfg, scaler_bars=train, include_supervised=False)
    assert res.meta["periods_per_year"] == ppy and res.meta["risk_free_rate"] == 0.0
    bh = res.runs["buy_and_hold"]
    want = m.sharpe_ratio(bh.returns, ppy, 0.0)
    assert res.metrics["buy_and_hold"]["sharpe_ratio"] == pytest.approx(want, rel=1e-12)


def test_measured_rate_ignores_outages_not_weekends():
    idx = pd.date_range("2020-01-01", periods=24 * 400, freq="1h", tz="UTC")
    weekdays = idx[idx.day_of_week < 5]
    assert m.measure_periods_per_year(weekdays) < 0.75 * m.measure_periods_per_year(idx)
    outage = np.r_[0:2000, 4000 : len(idx)]
    assert m.measure_periods_per_year(idx[outage]) == pytest.approx(8_760, rel=1e-9)
