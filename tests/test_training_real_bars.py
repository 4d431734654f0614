"""Learning check on real bars (issue 32 item 6): `configs/default.yaml`'s recipe, unchanged, on
a real shared set (MSFT + GOOGL + S&P 500 daily from ../shared/data/market), phase 1 at a tiny
budget.

With the shipped benchmark-relative agents the trained specialists must hold risk (average
gross exposure on validation above 0.2, no collapse to cash), differ from their benchmark
(tracking error above zero: it is not just the benchmark) and beat the best of several random
policies' validation Sharpe by a real margin, all measured with the same
`training.validation.validate` (rl_trading.metrics, rf 0, measured calendar). This is a learning
check, not an edge claim: that belongs to `benchmarks/real_markets.py` (docs/ablations.md).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from rl_trading.config import load_config
from rl_trading.metrics import tracking_error
from rl_trading.training.checkpoints import load_module
from rl_trading.training.env_bridge import hierarchical_factory
from rl_trading.training.runner import run_phase
from rl_trading.training.session import load_splits
from rl_trading.training.validation import gross_exposure, run_policies, validate

# ~1-2 min at load ~5 on the 2-core machine.
pytestmark = [pytest.mark.rllib, pytest.mark.market_data]

DEFAULT = Path(__file__).resolve().parent.parent / "configs/default.yaml"
FILES = {"MSFT": "msft_1d", "GOOGL": "googl_1d", "SP500": "sp500_1d"}
SPECS = [f"specialist_{s}" for s in FILES]
# The data and a tiny budget; the learning recipe is default.yaml's. Sampled in the driver so
# the run is deterministic (the shipped env runners give the same recipe, not the same draws).
OVERRIDES = [
    "data.source=files",
    "data.timeframe=1d",
    "data.embargo_bars=5",
    "env.sectors={}",
    "env.episode_length=250",
    "phases.phase1_timesteps=30000",
    "phases.eval_interval=2",
    "phases.checkpoint_interval=2",
    "resources.num_env_runners=0",
    "tracking.system_metrics=false",
]
MIN_GROSS_EXPOSURE = 0.2
MIN_SHARPE_MARGIN = 1.0
MIN_ACTIVE_TE = 0.002  # annualised, against the untilted benchmark book


def test_gross_exposure_is_mean_abs_sum():
    expo = np.array([[0.0, 0.0], [0.2, -0.3], [-0.1, 0.0]])
    assert gross_exposure(expo) == pytest.approx((0.0 + 0.5 + 0.1) / 3)
    assert gross_exposure(np.array([0.1, -0.3])) == pytest.approx(0.2)


def test_default_recipe_takes_risk_differs_from_its_benchmark_and_beats_random(
    ray_session, market_dir, tmp_path
):
    paths = {s: str(market_dir / f"{stem}.csv.gz") for s, stem in FILES.items()}
    cfg = load_config(
        DEFAULT,
        [*OVERRIDES, f"data.symbols={json.dumps(list(FILES))}", f"data.paths={json.dumps(paths)}"],
    )
    assert cfg.env.benchmark != "none"  # the shipped recipe is benchmark-relative
    train, val, _ = load_splits(cfg)
    factory = hierarchical_factory(cfg, train, val)
    t0 = time.monotonic()
    p1 = run_phase(cfg, 1, factory, tmp_path, tracking=False)
    secs = time.monotonic() - t0
    best = {pid: load_module(p1.best_checkpoint, pid) for pid in SPECS}
    trained = validate(factory, "specialists", best, seed=cfg.seed)
    randoms = []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        act = {a: (lambda o, r=rng: r.uniform(-1, 1, 1)) for a in SPECS}
        randoms.append(validate(factory, "specialists", best, agent_override=act))
    rand_sharpes = [r["val_sharpe"] for r in randoms]
    zero = {a: (lambda o: np.zeros(1)) for a in SPECS}  # no tilt: the benchmark, drifting
    neutral = validate(factory, "specialists", best, agent_override=zero)
    print(f"phase1 {secs:.0f}s trained={trained} random={rand_sharpes} neutral={neutral}")
    assert trained["val_sharpe"] == pytest.approx(p1.best_val_sharpe)
    assert trained["val_gross_exposure"] > MIN_GROSS_EXPOSURE
    # the neutral action holds the benchmark (not cash); the trained policy is not just that:
    # its returns differ from the neutral book's (which drifts in the same band, pays the same
    # costs) by a real tracking error
    assert neutral["val_gross_exposure"] > MIN_GROSS_EXPOSURE
    assert trained["val_tracking_error"] > 0.0
    curves = [
        run_policies(factory, "specialists", best, cfg.seed, agent_override=o)["equity"]
        for o in (None, zero)
    ]
    r_trained, r_neutral = (np.diff(c) / c[:-1] for c in curves)
    assert tracking_error(r_trained, r_neutral, factory.periods_per_year) > MIN_ACTIVE_TE
    assert trained["val_sharpe"] > max(rand_sharpes) + MIN_SHARPE_MARGIN
