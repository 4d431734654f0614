"""load_market for every source, the bundled sample, fingerprints."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rl_trading.config import CONFIG_DIR, load_config
from rl_trading.data import (
    SAMPLE_DIR,
    fingerprint,
    load_market,
    read_bars,
    resample,
    sample_files,
    synthetic_bars,
    synthetic_symbols,
)
from rl_trading.data.store import BarStore
from rl_trading.errors import DataError

QUICKSTART = CONFIG_DIR / "quickstart.yaml"


def test_sample_quickstart_daily() -> None:
    market = load_market(load_config(QUICKSTART))
    assert list(market) == ["MSFT", "GOOGL", "SP500"]
    idx = market["MSFT"].index
    assert all(df.index.equals(idx) for df in market.values())
    assert len(idx) == 2335 and idx[0] == pd.Timestamp("2009-05-22", tz="UTC")
    assert fingerprint(market) == fingerprint(load_market(load_config(QUICKSTART)))


def test_sample_minute_and_resampled() -> None:
    one = load_market(load_config(QUICKSTART, ["data.symbols=[MSFT]", "data.timeframe=1m"]))
    five = load_market(load_config(QUICKSTART, ["data.symbols=[MSFT]", "data.timeframe=5m"]))
    assert len(one["MSFT"]) == 7440 and len(five["MSFT"]) == 1488
    assert five["MSFT"]["volume"].sum() == pytest.approx(one["MSFT"]["volume"].sum())
    with pytest.raises(DataError, match="no bundled sample for GOOGL at 1m"):
        load_market(load_config(QUICKSTART, ["data.symbols=[GOOGL]", "data.timeframe=1m"]))


def test_sample_is_small_and_has_notice() -> None:
    total = sum(p.stat().st_size for p in SAMPLE_DIR.iterdir())
    assert total < 1.5e6
    notice = (SAMPLE_DIR / "NOTICE.md").read_text()
    for path in sample_files().values():
        assert path.name in notice
    assert "MIT" in notice and "NCSA" in notice


def test_synthetic_source_seeded() -> None:
    cfg = load_config(None, ["data.source=synthetic", "data.synthetic.n_bars=500"])
    a, b = load_market(cfg), load_market(cfg)
    assert list(a) == cfg.data.symbols and len(a["EURUSD"]) == 500
    assert fingerprint(a) == fingerprint(b)
    c = load_market(load_config(None, ["data.source=synthetic", "data.synthetic.n_bars=500",
                                       "data.synthetic.seed=8"]))  # fmt: skip
    assert fingerprint(a) != fingerprint(c)


def test_auto_mixes_real_files_and_synthetic_on_their_index(market_dir) -> None:
    path = market_dir / "eurusd_1h.csv.gz"
    cfg = load_config(
        None,
        [
            "data.source=auto",
            "data.synthetic_fallback=true",
            "data.symbols=[EURUSD, GBPUSD]",
            f"data.paths={{EURUSD: {path}}}",
            "data.timeframe=1h",
        ],
    )
    market = load_market(cfg)
    assert synthetic_symbols(market) == ["GBPUSD"]
    real = read_bars(path)
    assert market["EURUSD"].index.equals(real.index)
    assert market["GBPUSD"].index.equals(real.index)
    pd.testing.assert_frame_equal(market["EURUSD"], real)
    assert np.isfinite(market["GBPUSD"].to_numpy()).all()


def test_files_source_needs_paths_and_resamples(market_dir) -> None:
    with pytest.raises(DataError, match="data.paths has no file"):
        load_market(load_config(None, ["data.source=files", "data.symbols=[X]"]))
    azn = market_dir / "azn_l_1m.csv.gz"
    cfg = load_config(
        None,
        ["data.source=files", "data.symbols=[AZN]", f"data.paths={{AZN: {azn}}}",
         "data.timeframe=5m"],
    )  # fmt: skip
    market = load_market(cfg)
    pd.testing.assert_frame_equal(market["AZN"], resample(read_bars(azn), "5m"))
    two = cfg.data.model_copy(
        update={
            "symbols": ["AZN", "HK"],
            "paths": {"AZN": str(azn), "HK": str(market_dir / "9988_hk_5m.csv.gz")},
            "gap_policy": "inner",
        }
    )
    # London opens at 07:00 UTC, before Hong Kong closes at 08:00: inner keeps just that overlap
    both = load_market(cfg.model_copy(update={"data": two}))
    hk = read_bars(market_dir / "9988_hk_5m.csv.gz")
    common = resample(read_bars(azn), "5m").index.intersection(hk.index)
    assert len(common) > 50 and both["AZN"].index.equals(common) and both["HK"].index.equals(common)
    assert set(common.hour) <= {7}
    minute = cfg.data.model_copy(
        update={"timeframe": "1m", "paths": {"AZN": str(market_dir / "azn_l_5m.csv.gz")}}
    )
    with pytest.raises(DataError, match="coarser"):
        load_market(cfg.model_copy(update={"data": minute}))


def test_sql_source(workspace) -> None:
    bars = synthetic_bars("X", n_bars=300, seed=1)
    bars.index.freq = None
    BarStore().write(bars, "X", "1m")
    market = load_market(load_config(None, ["data.source=sql", "data.symbols=[X]"]))
    pd.testing.assert_frame_equal(market["X"], bars)
    with pytest.raises(DataError, match="no 1m bars for Y"):
        load_market(load_config(None, ["data.source=sql", "data.symbols=[Y]"]))
