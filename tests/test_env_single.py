"""TradingEnv: gymnasium API, reward/P&L reconciliation, costs, stop-loss, no look-ahead."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pandas as pd
import pytest
from gymnasium.utils.env_checker import check_env

from envs import TradingEnv as _TradingEnv
from rl_trading import metrics
from rl_trading.config import AppConfig
from rl_trading.errors import ConfigError


def TradingEnv(cfg: AppConfig | None = None, **kw):  # noqa: N802 - the class, with test defaults
    """The env with the capital and fee these tests' numbers were written for (the reference
    design's 10,000 at 0.1%; the env's own keys env.initial_capital / env.transaction_cost)."""
    kw.setdefault("initial_capital", 10_000.0)
    kw.setdefault("transaction_cost", 0.001)
    return _TradingEnv(cfg, **kw)


def make_bars(n: int = 400, seed: int = 0, vol: float = 0.01, flat: bool = False) -> pd.DataFrame:
    """Tiny seeded random-walk bars (or constant prices when `flat`)."""
    rng = np.random.default_rng(seed)
    index = pd.date_range("2024-01-01", periods=n, freq="1min", tz="UTC", name="timestamp")
    if flat:
        close = np.full(n, 100.0)
        open_ = close.copy()
    else:
        close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, vol, n)))
        open_ = np.concatenate([[100.0], close[:-1]]) * np.exp(rng.normal(0.0, vol / 5, n))
    high = np.maximum(open_, close) * (1.0 + (0.0 if flat else 0.001))
    low = np.minimum(open_, close) * (1.0 - (0.0 if flat else 0.001))
    volume = np.full(n, 1000.0) if flat else rng.uniform(500, 1500, n)
    return pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=index
    )


def run(env: TradingEnv, actions, seed: int = 0):
    """Step through `actions` (cycled); returns observations, rewards and infos."""
    obs, info = env.reset(seed=seed)
    observations, rewards, infos = [obs], [], [info]
    for k in range(100_000):
        obs, reward, term, trunc, info = env.step(actions[k % len(actions)])
        observations.append(obs)
        rewards.append(reward)
        infos.append(info)
        if term or trunc:
            break
    return observations, np.array(rewards), infos


@pytest.mark.parametrize("action_type", ["continuous", "discrete"])
@pytest.mark.parametrize("allow_short", [True, False])
def test_gymnasium_check_env(action_type, allow_short):
    env = TradingEnv(
        bars=make_bars(), window_size=10, action_type=action_type, allow_short=allow_short
    )
    check_env(env, skip_render_check=True)
    expected = (3 if allow_short else 2) if action_type == "discrete" else None
    if expected is not None:
        assert env.action_space.n == expected
    assert env.observation_space.shape == (10 * env.obs_layout()["n_features"] + 3,)


def with_gaps(bars: pd.DataFrame, seed: int, share: float = 0.15) -> pd.DataFrame:
    """`bars` with a seeded `share` of bars forward-filled the way `align` does it."""
    out = bars.copy()
    filled = np.random.default_rng(seed).random(len(out)) < share
    filled[0] = False
    close = out["close"].to_numpy().copy()
    for t in np.flatnonzero(filled):
        close[t] = close[t - 1]
    for name in ("open", "high", "low", "close"):
        out[name] = np.where(filled, close, out[name].to_numpy())
    out["volume"] = np.where(filled, 0.0, out["volume"].to_numpy())
    out["filled"] = filled
    return out


@pytest.mark.parametrize("realism", [False, True])
@pytest.mark.parametrize("action_type", ["continuous", "discrete"])
def test_log_return_rewards_sum_to_log_equity_ratio(action_type, realism):
    bars = make_bars(600, seed=1, vol=0.02)
    extra = {}
    if realism:  # forward-filled bars, borrow cost of shorts
        bars, extra = with_gaps(bars, seed=2), {"borrow_bps_per_year": 5e4}
    env = TradingEnv(
        bars=bars,
        window_size=5,
        action_type=action_type,
        episode_length=300,
        stop_loss_pct=0.03,
        slippage_bps=2.0,
        spread_bps=1.0,
        **extra,
    )
    env.action_space.seed(4)
    actions = [env.action_space.sample() for _ in range(50)]
    _, rewards, infos = run(env, actions)
    final = infos[-1]["equity"]
    assert len(rewards) == 300
    assert infos[-1]["total_costs"] > 0
    assert abs(rewards.sum() - math.log(final / env.initial_balance)) < 1e-9
    assert infos[-1]["stop_losses"] > 0
    if realism:
        assert infos[-1]["total_borrow_costs"] > 0
        real = ~bars["filled"].to_numpy()
        traded = [i["bar"] for i in infos[1:] if i["fill_units"] != 0.0]
        assert traded and all(real[b] for b in traded)  # nothing filled on a filled bar
    summary = env.episode_summary()
    assert summary["equity"][-1] == pytest.approx(final)
    assert summary["metrics"]["total_return"] == pytest.approx(final / 10_000 - 1)


def test_flat_prices_trading_costs_exactly_the_fees():
    fee, slip, spread = 0.002, 3.0, 2.0
    env = TradingEnv(
        bars=make_bars(200, flat=True),
        window_size=5,
        transaction_cost=fee,
        slippage_bps=slip,
        spread_bps=spread,
        max_position_size=0.5,
        stop_loss_pct=0.0,
        random_start=False,
        episode_length=50,
        rebalance_band=0.01,  # the fill's cost moves the held weight by less than the band
    )
    rate = fee + (slip + spread / 2) * 1e-4
    # long, hold, flat, short, flat: four fills
    _, rewards, infos = run(env, [np.array([1.0]), np.array([1.0]), np.array([0.0])] * 2)
    costs = sum(i["cost"] for i in infos[1:])
    assert costs > 0
    equity = infos[-1]["equity"]
    assert equity < env.initial_balance
    assert env.initial_balance - equity == pytest.approx(costs, rel=1e-12, abs=1e-9)
    # first fill: 0.5 x 10,000 notional
    assert infos[1]["cost"] == pytest.approx(0.5 * 10_000 * rate, rel=1e-12)
    assert infos[2]["cost"] == 0.0  # unchanged target, held within the band: no trade
    # doing nothing costs nothing
    _, _, idle = run(env, [np.array([0.0])])
    assert idle[-1]["equity"] == env.initial_balance


# (scenario, action, expected fill price): max_position 0.1 of 10,000 at 100, stop 5%
STOPS = [
    ("low_touches", 2, 95.0),  # long; the low reaches 94 and the close recovers: fill at 95
    ("gap_down", 2, 90.0),  # long; the bar opens at 90, below the level: fill at the open
    ("high_touches", 0, 105.0),  # short; the high reaches 106: fill at 105
    ("gap_up", 0, 110.0),  # short; the bar opens at 110: fill at the open
]


@pytest.mark.parametrize(("scenario", "action", "fill"), STOPS)
def test_stop_loss_triggers_on_low_high_and_fills_at_level_or_gap_open(scenario, action, fill):
    bars = make_bars(200, flat=True)
    at = 120
    col = bars.columns.get_loc
    if scenario == "low_touches":
        bars.iloc[at, col("low")] = 94.0
    elif scenario == "high_touches":
        bars.iloc[at, col("high")] = 106.0
    else:
        price = 90.0 if scenario == "gap_down" else 110.0
        for name in ("open", "high", "low", "close"):
            bars.iloc[at:, col(name)] = price
    env = TradingEnv(
        bars=bars,
        window_size=5,
        stop_loss_pct=0.05,
        eval_mode=True,
        action_type="discrete",
        transaction_cost=0.0,
        slippage_bps=0.0,
    )
    _, rewards, infos = run(env, [action])  # always long (2) or always short (0)
    stops = [i for i in infos[1:] if i["stop_loss"]]
    first = stops[0]
    assert first["bar"] == at  # not one bar later at the close
    assert first["position"] == 0.0
    side = 1.0 if action == 2 else -1.0
    assert first["equity"] == pytest.approx(10_000 * (1 + 0.1 * side * (fill / 100 - 1)), rel=1e-9)
    assert infos[-1]["stop_losses"] == len(stops)
    assert abs(rewards.sum() - math.log(infos[-1]["equity"] / 10_000)) < 1e-9


def test_forward_filled_bars_get_no_fills_and_no_stops():
    """An order for a forward-filled bar waits for the next real bar and fills at its open;
    a stop-loss level crossed only by the filled bar's repeated price does not fire there."""
    bars = make_bars(200, flat=True)
    bars["filled"] = False
    col = bars.columns.get_loc
    bars.iloc[100:103, col("filled")] = True  # bars 100, 101, 102 are forward-filled
    bars.iloc[103:, [col("open"), col("high"), col("low"), col("close")]] = 104.0
    env = TradingEnv(
        bars=bars, window_size=5, eval_mode=True, transaction_cost=0.0, slippage_bps=0.0,
        stop_loss_pct=0.0, max_position_size=1.0,
    )  # fmt: skip
    env.reset()
    while env._t < 99:
        env.step(np.array([0.0]))
    infos = [env.step(np.array([1.0]))[4] for _ in range(4)]  # decided at 99, 100, 101, 102
    assert [i["bar"] for i in infos] == [100, 101, 102, 103]
    assert [i["position"] for i in infos[:3]] == [0.0, 0.0, 0.0]  # waits on filled bars
    assert infos[3]["fill_units"] == pytest.approx(10_000 / 104.0)  # the next real open
    assert infos[3]["equity"] == pytest.approx(10_000)
    # a held long position is not stopped on filled bars, only on the next real bar
    bars2 = make_bars(200, flat=True)
    bars2["filled"] = False
    bars2.iloc[100:102, col("filled")] = True
    bars2.iloc[100:102, [col("open"), col("high"), col("low"), col("close")]] = 100.0
    bars2.iloc[100, col("low")] = 80.0  # a filled bar carrying a stray low: ignored
    bars2.iloc[102:, [col("open"), col("high"), col("low"), col("close")]] = 90.0
    env = TradingEnv(
        bars=bars2, window_size=5, eval_mode=True, transaction_cost=0.0, slippage_bps=0.0,
        stop_loss_pct=0.05, action_type="discrete",
    )  # fmt: skip
    _, _, infos = run(env, [2])
    first = next(i for i in infos[1:] if i["stop_loss"])
    assert first["bar"] == 102  # the first real bar after the gap, at its open (90)
    assert first["equity"] == pytest.approx(10_000 * (1 - 0.1 * 0.1), rel=1e-9)


def test_borrow_cost_charged_on_shorts_per_bar():
    bars = make_bars(200, flat=True)
    kw = dict(
        window_size=5, eval_mode=True, transaction_cost=0.0, slippage_bps=0.0, stop_loss_pct=0,
        rebalance_band=0.01,  # the short is not re-sized as borrow moves its weight
    )  # fmt: skip
    daily = AppConfig()
    daily.data.timeframe = "1d"
    daily.data.calendar = "crypto"  # 365 bars a year, whatever the test bars' own spacing
    env = TradingEnv(daily, bars=bars, borrow_bps_per_year=500.0, **kw)
    assert env.periods_per_year == metrics.periods_per_year(
        "1d", "crypto"
    )  # the env's one calendar
    _, rewards, infos = run(env, [np.array([-1.0])])
    per_bar = 0.1 * 10_000 * 500e-4 / env.periods_per_year  # short notional 1,000 at 100
    steps = len(infos) - 1
    assert infos[1]["borrow_cost"] == pytest.approx(per_bar, rel=1e-12)
    assert infos[-1]["total_borrow_costs"] == pytest.approx(per_bar * steps, rel=1e-9)
    assert 10_000 - infos[-1]["equity"] == pytest.approx(per_bar * steps, rel=1e-9)
    assert abs(rewards.sum() - math.log(infos[-1]["equity"] / 10_000)) < 1e-9
    assert env.episode_summary()["borrow_costs"] == infos[-1]["total_borrow_costs"]
    # longs pay nothing, and the default is free shorting
    _, _, longs = run(TradingEnv(bars=bars, borrow_bps_per_year=500.0, **kw), [np.array([1.0])])
    _, _, free = run(TradingEnv(bars=bars, **kw), [np.array([-1.0])])
    assert longs[-1]["total_borrow_costs"] == free[-1]["total_borrow_costs"] == 0.0
    assert free[-1]["equity"] == 10_000


def test_determinism_and_pickling():
    bars = make_bars(500, seed=2)

    def trajectory(env):
        env.action_space.seed(9)
        acts = [env.action_space.sample() for _ in range(40)]
        obs, rew, infos = run(env, acts, seed=5)
        return np.stack(obs), rew, [i["equity"] for i in infos]

    a = trajectory(TradingEnv(bars=bars, window_size=8, episode_length=100))
    b = trajectory(TradingEnv(bars=bars, window_size=8, episode_length=100))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    env = TradingEnv(bars=bars, window_size=8, episode_length=100)
    env.reset(seed=1)
    env.step(np.array([0.5]))
    clone = pickle.loads(pickle.dumps(env))
    out1 = env.step(np.array([-0.3]))
    out2 = clone.step(np.array([-0.3]))
    np.testing.assert_array_equal(out1[0], out2[0])
    assert out1[1] == out2[1] and out1[4]["equity"] == out2[4]["equity"]


def test_no_look_ahead_when_future_bars_are_cut():
    bars = make_bars(400, seed=3)
    cut = 250
    full = TradingEnv(bars=bars, window_size=10, eval_mode=True)
    short = TradingEnv(bars=bars.iloc[:cut], window_size=10, eval_mode=True, scaler=full.scaler)
    acts = [np.array([a]) for a in (1.0, 0.3, -0.7, 0.0, -1.0, 0.6)]
    obs_f, rew_f, _ = run(full, acts)
    obs_s, rew_s, _ = run(short, acts)
    n = len(rew_s)
    assert n == cut - 1 - full.first_bar
    np.testing.assert_array_equal(np.stack(obs_f[: n + 1]), np.stack(obs_s))
    np.testing.assert_array_equal(rew_f[:n], rew_s)


@pytest.mark.parametrize("kind", ["differential_sharpe", "sortino", "drawdown"])
def test_other_reward_kinds_are_finite_and_differ(kind):
    bars = make_bars(400, seed=4)
    acts = [np.array([a]) for a in (1.0, -1.0, 0.5)]
    _, base, _ = run(TradingEnv(bars=bars, window_size=5, episode_length=100), acts)
    _, rew, _ = run(TradingEnv(bars=bars, window_size=5, episode_length=100, reward=kind), acts)
    assert np.isfinite(rew).all()
    assert not np.allclose(rew, base)


def test_transaction_cost_weight_zero_rewards_gross_pnl():
    bars = make_bars(200, flat=True)
    env = TradingEnv(bars=bars, window_size=5, transaction_cost_weight=0.0, episode_length=40)
    _, rew, infos = run(env, [np.array([1.0]), np.array([-1.0])])
    assert infos[-1]["total_costs"] > 0
    assert np.abs(rew).max() < 1e-6  # flat prices: no gross P&L, costs not in the reward


def test_config_object_and_bad_configuration():
    cfg = AppConfig()
    cfg.train.window_size = 7
    env = TradingEnv(cfg, bars=make_bars())
    assert env.window == 7 and cfg.train.window_size == 7
    with pytest.raises(ConfigError):
        TradingEnv(bars=make_bars(), reward="sharpe_of_dreams")
    with pytest.raises(ConfigError):
        TradingEnv(bars=make_bars(), no_such_option=1)
    with pytest.raises(ConfigError):
        TradingEnv(bars=make_bars(100), window_size=100)
    nan_bars = make_bars()
    nan_bars.iloc[50, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        TradingEnv(bars=nan_bars)
    with pytest.raises(ValueError, match="lack columns"):
        TradingEnv(bars=make_bars().drop(columns=["volume"]))
