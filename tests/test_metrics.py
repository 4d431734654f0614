"""rl_trading.metrics checked against values computed by hand on tiny series."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rl_trading import metrics as m


def test_periods_per_year_conventions():
    assert m.periods_per_year("1m") == 365 * 24 * 60
    assert m.periods_per_year("5m") == 365 * 24 * 12
    assert m.periods_per_year("1h") == 365 * 24
    assert m.periods_per_year("1d") == 365
    assert m.periods_per_year("1d", calendar="equity") == 252
    assert m.periods_per_year("1h", calendar="equity") == pytest.approx(252 * 6.5)
    assert m.periods_per_year("1h", calendar="fx") == 260 * 24
    assert m.periods_per_year("1d", calendar="crypto") == 365
    assert m.periods_per_year("1m", calendar="equity") == 252 * 390
    assert m.periods_per_year("1m", override=1000) == 1000
    assert m.periods_per_year(52) == 52
    with pytest.raises(ValueError):
        m.periods_per_year("fortnightly")


def test_returns_and_total_return():
    eq = np.array([100.0, 110.0, 99.0])
    np.testing.assert_allclose(m.simple_returns(eq), [0.1, -0.1])
    np.testing.assert_allclose(m.log_returns(eq), [math.log(1.1), math.log(0.9)])
    assert m.total_return(eq) == pytest.approx(-0.01)
    assert m.simple_returns([5.0]).size == 0
    assert m.total_return([5.0]) == 0.0


def test_sharpe_by_hand():
    r = np.array([0.01, -0.02, 0.03])
    mean = 0.02 / 3
    std = math.sqrt(((0.01 - mean) ** 2 + (-0.02 - mean) ** 2 + (0.03 - mean) ** 2) / 2)
    assert m.sharpe_ratio(r, 252) == pytest.approx(mean / std * math.sqrt(252))
    # risk free per period = rf / ppy; the std is unchanged by a constant shift
    rf = 0.05
    assert m.sharpe_ratio(r, 252, rf) == pytest.approx((mean - rf / 252) / std * math.sqrt(252))
    assert m.sharpe_ratio(r, "1d") == pytest.approx(mean / std * math.sqrt(365))


def test_sortino_by_hand():
    r = np.array([0.02, -0.01, 0.03, -0.02])
    mean = 0.02 / 4
    dd = math.sqrt((0.01**2 + 0.02**2) / 4)
    assert m.sortino_ratio(r, 100) == pytest.approx(mean / dd * 10.0)
    assert m.sortino_ratio([0.01, 0.02], 100) == 0.0  # no downside


def test_max_drawdown_calmar_annualized():
    eq = np.array([100.0, 120.0, 90.0, 130.0, 117.0])
    assert m.max_drawdown(eq) == pytest.approx(0.25)
    ann = (117.0 / 100.0) ** (10 / 4) - 1
    assert m.annualized_return(eq, 10) == pytest.approx(ann)
    assert m.calmar_ratio(eq, 10) == pytest.approx(ann / 0.25)
    assert m.max_drawdown([100, 101, 102]) == 0.0
    assert m.calmar_ratio([100, 101, 102], 10) == 0.0


def test_volatility_win_rate_profit_factor():
    r = np.array([0.01, 0.0, -0.02, 0.03, 0.0])
    assert m.volatility(r, 4) == pytest.approx(np.std(r, ddof=1) * 2)
    assert m.win_rate(r) == pytest.approx(2 / 3)  # zero returns ignored
    assert m.profit_factor(r) == pytest.approx(0.04 / 0.02)
    assert m.profit_factor([0.01, 0.02]) == m.PROFIT_FACTOR_CAP
    assert m.profit_factor([-0.01]) == 0.0
    assert m.win_rate([0.0, 0.0]) == 0.0


def test_turnover_is_traded_notional_over_the_equity_before_it():
    # bar 1 trades the whole book, bar 2 nothing, bar 3 half of bar 2's equity
    traded, equity = [0.0, 100.0, 0.0, 55.0], [100.0, 100.0, 110.0, 100.0]
    assert m.turnover(traded, equity) == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    assert m.turnover([0.0], [100.0]) == 0.0 and m.turnover([], []) == 0.0
    with pytest.raises(ValueError, match="traded values"):
        m.turnover([0.0, 1.0], [100.0])


def test_var_cvar_and_compliance():
    r = np.arange(-10, 10) / 100.0  # -0.10 .. 0.09, 20 values
    q = np.quantile(r, 0.05)  # linear interpolation: -0.10 + 0.95 * 0.01
    assert q == pytest.approx(-0.0905)
    assert m.value_at_risk(r, 0.95) == pytest.approx(0.0905)
    assert m.conditional_value_at_risk(r, 0.95) == pytest.approx(0.10)  # only -0.10 <= q
    assert m.value_at_risk([0.01, 0.02], 0.95) == 0.0  # all gains: no loss at risk
    assert m.var_compliance_rate([False, True, False, False]) == pytest.approx(0.75)
    rets = np.array([-0.01, -0.05, 0.02])
    var = np.array([0.02, 0.02, 0.02])
    assert m.var_compliance_rate(rets, var) == pytest.approx(2 / 3)
    assert m.var_compliance_rate([]) == 1.0


def test_diversification():
    assert m.herfindahl([0.5, 0.5]) == pytest.approx(0.5)
    assert m.diversification([0.5, -0.5]) == pytest.approx(0.5)
    assert m.diversification([1.0, 0.0, 0.0]) == 0.0
    assert m.diversification([0.0, 0.0]) == 0.0
    assert m.diversification([1, 1, 1, 1]) == pytest.approx(0.75)


def test_penalties():
    assert m.downside_penalty(-0.02) == pytest.approx(0.0004)
    assert m.downside_penalty(0.01) == 0.0
    assert m.drawdown_penalty(90.0, 100.0) == pytest.approx(0.1)
    assert m.drawdown_penalty(110.0, 100.0) == 0.0


def test_differential_sharpe_by_hand():
    dsr = m.DifferentialSharpe(eta=0.5, clip=None)
    assert dsr.update(0.1) == 0.0  # no variance yet
    assert (dsr.a, dsr.b) == pytest.approx((0.05, 0.005))
    # second step: A=0.05, B=0.005, r=0.2 -> dA=0.15, dB=0.035, var=0.0025
    expected = (0.005 * 0.15 - 0.5 * 0.05 * 0.035) / 0.0025**1.5
    assert dsr.update(0.2) == pytest.approx(expected)
    dsr.reset()
    assert dsr.update(0.3) == 0.0
    assert expected == pytest.approx(-1.0)
    clipped = m.DifferentialSharpe(eta=0.5, clip=0.5)
    clipped.update(0.1)
    assert clipped.update(0.2) == -0.5


def test_rolling_sharpe():
    rs = m.RollingSharpe(window=3, min_std=1e-3)
    assert rs.update(0.01) == pytest.approx(0.01 / 1e-3)  # one value: std floored
    rs.update(0.03)
    val = rs.update(0.02)
    sd = np.std([0.01, 0.03, 0.02])
    assert val == pytest.approx(0.02 / sd)
    assert rs.sharpe() == pytest.approx(0.02 / sd)
    rs.update(-0.01)  # window now [0.03, 0.02, -0.01]
    win = np.array([0.03, 0.02, -0.01])
    assert rs.std() == pytest.approx(np.std(win))
    assert rs.sharpe() == pytest.approx(win.mean() / np.std(win))


def test_rolling_sharpe_array_matches_scalar():
    rng = np.random.default_rng(0)
    data = rng.normal(0, 0.01, (50, 3))
    vec = m.RollingSharpeArray(window=7, size=3)
    scalars = [m.RollingSharpe(window=7, min_std=0.004) for _ in range(3)]
    for row in data:
        got = vec.update(row, 0.004)
        want = [s.update(float(x)) for s, x in zip(scalars, row, strict=True)]
        np.testing.assert_allclose(got, want, rtol=1e-9)
    np.testing.assert_allclose(vec.sharpe(), [s.sharpe() for s in scalars], rtol=1e-9)
    assert m.herfindahl([np.nan, 1.0, 1.0]) == pytest.approx(0.5)


def test_edge_cases_are_finite():
    cases = {
        "flat": np.full(10, 100.0),
        "one bar": np.array([100.0]),
        "empty": np.array([]),
        "all losses": 100.0 * 0.99 ** np.arange(20),
        "with nan": np.array([100.0, np.nan, 101.0, 102.0]),
    }
    for name, eq in cases.items():
        summary = m.summarize(eq, traded=np.ones(eq.size), periods_per_year="1m")
        for key, value in summary.items():
            assert math.isfinite(value), (name, key, value)
    flat = m.summarize(cases["flat"], periods_per_year=252)
    assert flat["sharpe_ratio"] == 0.0 and flat["max_drawdown"] == 0.0
    # a strategy that never trades scores 0 on both ratios (rf = 0, the one convention)
    assert flat["sortino_ratio"] == 0.0 and m.RISK_FREE_RATE == 0.0
    assert flat["volatility"] == 0.0 and flat["total_return"] == 0.0
    losses = m.summarize(cases["all losses"], periods_per_year=252)
    assert losses["win_rate"] == 0.0 and losses["profit_factor"] == 0.0
    assert losses["max_drawdown"] == pytest.approx(1 - 0.99**19)
    assert losses["sortino_ratio"] < 0 and losses["annualized_return"] < 0


def test_summarize_keys_and_values():
    eq = np.array([100.0, 102.0, 101.0, 104.0])
    s = m.summarize(eq, traded=[0, 102.0, 0, 52.0], periods_per_year=252)
    r = m.simple_returns(eq)
    assert s["sharpe_ratio"] == pytest.approx(m.sharpe_ratio(r, 252, 0.0))
    assert s["psr"] == pytest.approx(m.probabilistic_sharpe_ratio(r))
    assert s["total_return"] == pytest.approx(0.04)
    assert s["turnover"] == pytest.approx((102.0 / 100.0 + 0.0 + 52.0 / 101.0) / 3)
    assert s["n_periods"] == 3 and s["final_equity"] == 104.0


def test_psr_and_dsr_match_the_papers_formulas():
    """PSR/DSR by hand from Bailey & Lopez de Prado's formulas; more trials deflate more."""
    import math

    from scipy import stats

    rng = np.random.default_rng(0)
    r = rng.normal(0.001, 0.01, 500)
    sr = r.mean() / r.std(ddof=1)
    g3, g4 = stats.skew(r), stats.kurtosis(r, fisher=False)
    want = stats.norm.cdf(
        sr * math.sqrt(r.size - 1) / math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr**2)
    )
    assert m.probabilistic_sharpe_ratio(r) == pytest.approx(want, rel=1e-9)
    var = 0.01  # a wide spread of trial Sharpes: above the no-skill floor 1 / (T - 1)
    e = 0.5772156649015329
    sr0 = math.sqrt(var) * (
        (1 - e) * stats.norm.ppf(1 - 1 / 100) + e * stats.norm.ppf(1 - 1 / (100 * math.e))
    )
    assert m.expected_max_sharpe(100, var) == pytest.approx(sr0, rel=1e-8)
    trials = rng.normal(0, math.sqrt(var), 100)
    dsr = m.deflated_sharpe_ratio(r, 100, trials)
    v = np.var(trials, ddof=1)
    assert dsr == pytest.approx(m.probabilistic_sharpe_ratio(r, m.expected_max_sharpe(100, v)))
    assert m.deflated_sharpe_ratio(r, 1) == pytest.approx(m.probabilistic_sharpe_ratio(r))
    assert m.deflated_sharpe_ratio(r, 1000) < m.deflated_sharpe_ratio(r, 10) < want
    # a null strategy's DSR over many trials is far from significant
    null = rng.normal(0, 0.01, 500)
    assert m.deflated_sharpe_ratio(null, 50) < 0.95


def test_correlated_trials_deflate_at_least_like_no_skill_trials():
    """Checkpoints of one run have nearly equal Sharpes: their tiny spread must not make the
    DSR lenient; the trials' variance is floored at the no-skill 1 / (T - 1)."""
    rng = np.random.default_rng(3)
    r = rng.normal(0.1 / math.sqrt(252), 0.01, 750)
    correlated = 0.05 + rng.normal(0, 1e-4, 30)
    assert m.trials_sharpe_variance(r.size, correlated) == pytest.approx(1 / 749)
    assert m.trials_sharpe_variance(r.size) == pytest.approx(1 / 749)
    assert m.trials_sharpe_variance(r.size, [0.1, 0.5, float("nan")]) > 1 / 749
    assert m.deflated_sharpe_ratio(r, 30, correlated) == m.deflated_sharpe_ratio(r, 30)
    wide = rng.normal(0, 0.2, 30)
    assert m.deflated_sharpe_ratio(r, 30, wide) < m.deflated_sharpe_ratio(r, 30)


def test_measure_periods_per_year_on_synthetic_timestamps():
    """Bars per elapsed year: 24/7, weekdays only, equity sessions; outages are not counted."""
    import pandas as pd

    crypto = pd.date_range("2021-01-01", periods=2 * 17_520, freq="30min", tz="UTC")
    assert m.measure_periods_per_year(crypto) == pytest.approx(17_520, rel=1e-12)
    hours = pd.date_range("2021-01-04", "2022-12-30", freq="1h", tz="UTC")
    fx = hours[hours.day_of_week < 5]
    assert m.measure_periods_per_year(fx) == pytest.approx(6_260, rel=0.02)
    days = pd.bdate_range("2010-01-01", "2019-12-31", tz="UTC")
    assert m.measure_periods_per_year(days) == pytest.approx(260, rel=0.01)
    # a 3-month outage in the middle leaves the rate unchanged
    hole = crypto[(crypto < "2021-06-01") | (crypto > "2021-09-01")]
    assert m.measure_periods_per_year(hole) == pytest.approx(17_520, rel=2e-3)
    with pytest.raises(ValueError):
        m.measure_periods_per_year(crypto[:1])


def test_pbo_noise_versus_one_superior_configuration():
    """CSCV PBO: noise configurations overfit (PBO ~0.5+), one clearly better one does not."""
    noises = [np.random.default_rng(s).normal(0.0, 0.01, size=(600, 10)) for s in range(8)]
    pbo_noise = [m.probability_of_backtest_overfitting(x, n_splits=8) for x in noises]
    assert 0.35 <= float(np.mean(pbo_noise)) <= 0.7  # a coin flip on average
    noise = noises[0]
    better = noise.copy()
    better[:, 4] += 0.004
    assert m.probability_of_backtest_overfitting(better, n_splits=8) <= 0.05
    # per-period scores (e.g. PBT members' objective per iteration) ranked by their mean
    scores = np.random.default_rng(1).normal(0.0, 1.0, size=(12, 6))
    scores[:, 2] += 3.0
    assert m.probability_of_backtest_overfitting(scores, n_splits=6, statistic="mean") == 0.0
    with pytest.raises(ValueError):
        m.probability_of_backtest_overfitting(noise[:, :1])
    with pytest.raises(ValueError):
        m.probability_of_backtest_overfitting(noise[:10], n_splits=10)


def test_a_flat_policy_has_psr_one_half_and_no_deflated_sharpe():
    """Zero variance, Sharpe 0: PSR against 0 is 0.5 (no information), but against the Sharpe
    the best of many null trials shows by luck (DSR) it is 0, not a flattering 0.5."""
    flat = np.zeros(250)
    assert m.probabilistic_sharpe_ratio(flat) == 0.5
    assert m.probabilistic_sharpe_ratio(flat, sr_benchmark=0.1) == 0.0
    assert m.probabilistic_sharpe_ratio(flat, sr_benchmark=-0.1) == 1.0
    assert m.deflated_sharpe_ratio(flat, n_trials=1) == 0.5
    assert m.deflated_sharpe_ratio(flat, n_trials=99) == 0.0


def test_active_metrics_pair_the_bars_where_both_returns_are_finite():
    r = np.array([0.01, np.nan, 0.02, 0.03, -0.01])
    b = np.array([0.0, 0.01, np.nan, 0.02, 0.0])
    keep = [0, 3, 4]  # a bar missing on either side is dropped from both
    want = m.active_metrics(r[keep], b[keep], 252)
    got = m.active_metrics(r, b, 252)
    assert got == pytest.approx(want)
    with pytest.raises(ValueError, match="differ in length"):
        m.active_metrics(r, b[:-1], 252)
