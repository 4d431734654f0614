"""Time splits and walk-forward folds: ordered, disjoint, embargo honoured."""

from __future__ import annotations

import pytest

from rl_trading.data import split_by_time, synthetic_market, walk_forward_splits
from rl_trading.errors import DataError


def test_split_by_time_dict_ordered_with_embargo() -> None:
    bars = synthetic_market(["A", "B"], n_bars=1000, seed=1)
    parts = split_by_time(bars, 0.7, 0.15, embargo_bars=20)
    for sym in ("A", "B"):
        tr, va, te = parts.train[sym], parts.val[sym], parts.test[sym]
        assert len(tr) == 700 and len(va) == 150 and len(te) == 1000 - 700 - 150 - 40
        assert tr.index[-1] < va.index[0] and va.index[-1] < te.index[0]
        full = bars[sym].index
        assert full.get_loc(va.index[0]) - full.get_loc(tr.index[-1]) == 21
        assert full.get_loc(te.index[0]) - full.get_loc(va.index[-1]) == 21
        assert not set(tr.index) & set(va.index) and not set(va.index) & set(te.index)


def test_split_frame_and_errors() -> None:
    frame = synthetic_market(["A"], n_bars=100, seed=1)["A"]
    parts = split_by_time(frame, 0.6, 0.2, 0)
    assert len(parts.train) + len(parts.val) + len(parts.test) == 100
    with pytest.raises(DataError, match="too few bars"):
        split_by_time(frame, 0.6, 0.2, embargo_bars=30)
    unaligned = {"A": frame, "B": frame.iloc[1:]}
    with pytest.raises(DataError, match="aligned"):
        split_by_time(unaligned, 0.6, 0.2, 0)


@pytest.mark.parametrize("expanding", [True, False])
def test_walk_forward_folds(expanding: bool) -> None:
    folds = walk_forward_splits(1000, n_folds=4, embargo=10, expanding=expanding)
    assert len(folds) == 4
    prev_test_end = None
    for f in folds:
        assert f.train.stop + 10 == f.test.start
        assert f.train.start < f.train.stop <= f.test.start < f.test.stop
        if prev_test_end is not None:
            assert f.test.start == prev_test_end  # consecutive, non-overlapping test blocks
        prev_test_end = f.test.stop
    assert folds[-1].test.stop == 1000
    if not expanding:
        sizes = {f.train.stop - f.train.start for f in folds}
        assert len(sizes) == 1
    bars = synthetic_market(["A"], n_bars=1000, seed=1)
    train, test = folds[1].select(bars)
    assert train["A"].index[-1] < test["A"].index[0]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [([], 40), (["env.trend_windows=[10, 100]"], 100)],  # warm-up / the longest trend window
)
def test_val_and_test_keep_their_first_bars_without_look_ahead(extra, expected) -> None:
    """`split_for_env` prepends only past bars to val / test, so the env's first decision is
    the split's own first bar; features there use causal history only (truncation test)."""
    import numpy as np

    from envs import HierarchicalTradingEnv
    from rl_trading.config import load_config
    from rl_trading.data import compute_features, env_history, split_for_env

    sets = ["data.timeframe=1h", "train.window_size=8", "env.risk_window=20", *extra]
    cfg = load_config(overrides=sets)
    bars = synthetic_market(["AAA", "BBB"], n_bars=1500, seed=2, timeframe="1h")
    d = cfg.data
    plain = split_by_time(bars, d.train_frac, d.val_frac, d.embargo_bars)
    parts = split_for_env(bars, cfg)
    history = env_history(cfg)
    assert history == expected  # not window 8 or risk window 20
    full = bars["AAA"]
    for name in ("val", "test"):
        mine, ref = getattr(parts, name)["AAA"], getattr(plain, name)["AAA"]
        start = full.index.get_loc(ref.index[0])
        assert mine.index[history:].equals(ref.index)  # the split itself, all of it
        assert mine.index[:history].equals(full.index[start - history : start])  # only the past
        env = HierarchicalTradingEnv(cfg, bars=getattr(parts, name), mode="joint", eval_mode=True)
        assert env.index[env.first_bar] == ref.index[0]  # first decision = first split bar
    assert parts.train["AAA"].index.equals(plain.train["AAA"].index)
    # Truncation: features at bar t computed on bars up to t equal those of the full history,
    # so nothing after t (in particular nothing after a split boundary) is used.
    feats = compute_features(full)
    for t in (60, 400, 1049, 1270):
        cut = compute_features(full.iloc[: t + 1])
        np.testing.assert_allclose(cut.iloc[-1].to_numpy(), feats.iloc[t].to_numpy(), rtol=1e-12)
