"""Paper trading: replay parity with the backtest, restart after SIGKILL, a SQL feed followed
while another process appends to it, one-line errors before anything trades, the ledger's
atomicity, feed faults, the kill switch and the drift statistics. The tests share one
registered model (about 20 s to build); the longer ones are marked slow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from envs.risk import rolling_variance
from rl_trading import metrics
from rl_trading.cli.main import main
from rl_trading.config import CONFIG_DIR, AppConfig, load_config
from rl_trading.data.features import FEATURE_COLUMNS
from rl_trading.data.schema import BAR_COLUMNS

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "rl_trading"]


# --------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def paper_ws(tmp_path_factory):
    """A workspace with one registered hierarchical model (quickstart data, untrained random
    weights: parity holds for any policy) and its backtest on the test split."""
    from envs import HierarchicalTradingEnv
    from policies import module_spec
    from rl_trading.evaluation.registration import register_policy
    from rl_trading.evaluation.selection import select_bars

    ws = tmp_path_factory.mktemp("paper_ws")
    old = Path.cwd()
    saved = {
        k: os.environ.pop(k) for k in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS") if k in os.environ
    }
    os.chdir(ws)
    try:
        cfg = load_config(
            CONFIG_DIR / "quickstart.yaml",
            ["policy.hidden_sizes=[8,8]", "tracking.system_metrics=false"],
        )
        bars, _, _ = select_bars(cfg, None, "train")
        env = HierarchicalTradingEnv(cfg, bars=bars, mode="joint", eval_mode=True)
        root = ws / "ckpt" / "learner_group" / "learner" / "rl_module"
        torch.manual_seed(0)
        for agent in env.possible_agents:
            spec = module_spec(cfg, agent, env.observation_space(agent), env.action_space(agent))
            module = spec.build()
            with torch.no_grad():
                for p in module.parameters():
                    p.normal_(0.0, 0.5)
            module.save_to_path(root / agent)
        rec, result = register_policy(ws / "ckpt", cfg, "hierarchical_ppo", split="test")
        n_bars = len(next(iter(select_bars(cfg, None, "test")[0].values())))
    finally:
        os.chdir(old)
        os.environ.update(saved)
    return {"ws": ws, "name": rec.name, "backtest": result.runs["policy"], "n_bars": n_bars}


@pytest.fixture()
def in_ws(paper_ws, monkeypatch):
    monkeypatch.chdir(paper_ws["ws"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return paper_ws


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["COLUMNS"] = "200"
    return env


def _status(db: str, session: str, capsys) -> dict:
    capsys.readouterr()
    assert main(["paper", "status", "--session", session, "--db", db, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _resolved(name: str):
    from rl_trading.paper import resolve_model

    return resolve_model(name)


# ------------------------------------------------------------------------------ parity
def test_replay_ends_at_the_backtests_equity_with_the_same_orders(in_ws, tmp_path, capsys):
    from rl_trading.paper import Ledger

    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    out_dir = tmp_path / "report"
    code = main(["paper", "run", "--model", in_ws["name"], "--session", "s1",
                 "--source", "replay", "--split", "test", "--db", db,
                 "--out", str(out_dir)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    # the report: the backtest of the bars the session saw, and both curves in one plot
    report = json.loads((out_dir / "report.json").read_text())
    assert report["parity_rel_diff"] < 1e-9 and (out_dir / "equity.png").stat().st_size > 0
    st = _status(db, "s1", capsys)
    bt = in_ws["backtest"]
    assert st["state"] == "finished"
    assert st["equity"] == pytest.approx(float(bt.equity[-1]), rel=1e-6)
    eq = Ledger(db).equity_of("s1")
    # the whole curve and the book after every bar are the backtest's
    assert list(eq.index) == list(bt.index)
    np.testing.assert_allclose(eq["equity"].to_numpy(), bt.equity, rtol=1e-9)
    expo = np.array([json.loads(x) for x in eq["exposures"]])
    np.testing.assert_allclose(expo[1:], bt.weights[1:], rtol=1e-9, atol=1e-12)
    # an order on every bar where the book changed; none when it did not
    changed = int((np.abs(np.diff(expo, axis=0)) > 0).sum())
    assert 0 < len(st["orders"]) <= changed
    assert {"equity", "cash", "positions", "orders", "bars_processed", "last_bar"} <= set(st)
    # the report's turnover is the backtest's, from the orders' traded notional
    assert report["turnover"] > 0
    assert report["turnover"] == pytest.approx(metrics.turnover(bt.traded, bt.equity), rel=1e-6)
    # session list, and the finished session is not "in use"
    assert main(["paper", "list", "--db", db]) == 0
    assert "s1" in capsys.readouterr().out


def test_growing_env_equals_the_prebuilt_one(in_ws, tmp_path, monkeypatch):
    """The live path (each bar's features and covariance streamed into the env's next
    placeholder row, the env rebuilt with its episode carried over when they run out) trades
    exactly like the replay's env built once; and an env over a prefix of the bars has the
    same market, feature and risk rows as one over all of them (every array is causal)."""
    from envs import HierarchicalTradingEnv
    from rl_trading.evaluation.backtest import scalers_from
    from rl_trading.paper import Ledger, PaperOptions, PaperSession, SimulatedBroker
    from rl_trading.paper.broker import first_decision_bar
    from rl_trading.paper.loop import make_feed

    model = _resolved(in_ws["name"])
    bars = make_feed(model, "replay").history
    k = first_decision_bar(model.cfg) + 20
    kw = {"mode": "joint", "eval_mode": True, "scalers": scalers_from(model.bundle.preprocessing)}
    full = HierarchicalTradingEnv(model.cfg, bars=bars, **kw)
    part = HierarchicalTradingEnv(model.cfg, bars={s: f.iloc[:k] for s, f in bars.items()}, **kw)
    for name in ("_k_market", "_k_cov", "_k_corr", "_k_ann_vol", "_corr_ut"):
        np.testing.assert_array_equal(getattr(part, name), getattr(full, name)[:k], err_msg=name)
    np.testing.assert_array_equal(part._feat_all, full._feat_all[:, :k])

    n = 40
    monkeypatch.setattr(SimulatedBroker, "LIVE_ROWS", 12)  # rebuilt now and then too
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    opts = PaperOptions(session="live", max_bars=first_decision_bar(model.cfg) + n, prebuild=False)
    session = PaperSession(model, make_feed(model, "replay"), ledger, opts)
    res = session.run()
    assert session.sim.streamed and 2 <= res.rebuilds <= 5  # streamed, not rebuilt per bar
    eq = ledger.equity_of("live")["equity"].to_numpy()
    np.testing.assert_array_equal(eq, in_ws["backtest"].equity[: len(eq)])
    # the env's market, feature and risk rows written bar by bar are the batch rows
    live = session.sim.env
    t = live.book().bar
    for name in ("_k_market", "_k_cov", "_k_corr", "_k_ann_vol", "_corr_ut"):
        np.testing.assert_array_equal(
            getattr(live, name)[: t + 1], getattr(full, name)[: t + 1], err_msg=name
        )
    np.testing.assert_array_equal(live._feat_all[:, : t + 1], full._feat_all[:, : t + 1])


@pytest.mark.slow
def test_sigkill_mid_replay_then_restart_resumes_exactly(in_ws, tmp_path, capsys):
    from rl_trading.paper import Ledger

    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    args = ["paper", "run", "--model", in_ws["name"], "--session", "k", "--db", db, "--no-report"]
    proc = subprocess.Popen(CLI + args + ["--speed", "60"], cwd=in_ws["ws"], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    ledger = Ledger(db)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        row = ledger.session("k")
        if row and (row["bars_processed"] or 0) >= 120:
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = ledger.session("k")["bars_processed"]
    assert 120 <= killed_at < in_ws["n_bars"]
    out = subprocess.run(CLI + args, cwd=in_ws["ws"], env=_env(), capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    st = _status(db, "k", capsys)
    bt = in_ws["backtest"]
    assert st["state"] == "finished" and st["bars_processed"] == in_ws["n_bars"]
    assert st["equity"] == pytest.approx(float(bt.equity[-1]), rel=1e-6)
    # the same orders as a run never interrupted
    main(["paper", "run", "--model", in_ws["name"], "--session", "ref", "--db", db, "--no-report"])
    ref = _status(db, "ref", capsys)
    assert len(st["orders"]) == len(ref["orders"])
    strip = [{k: v for k, v in o.items()} for o in st["orders"]]
    assert strip == ref["orders"]
    eq = ledger.equity_of("k")
    assert eq.index.is_unique and len(eq) == len(bt.equity)


def _follow_sql(in_ws, db_url: str, n: int) -> None:
    """`paper run --source sql` in a subprocess while this process appends the first `n` bars
    of the test split; the session ends at the backtest of those bars."""
    from rl_trading.data.store import BarStore
    from rl_trading.evaluation.backtest import run_policy
    from rl_trading.paper import Ledger
    from rl_trading.paper.loop import make_feed

    model = _resolved(in_ws["name"])
    bars = {s: f.iloc[:n] for s, f in make_feed(model, "replay").history.items()}
    expected, _ = run_policy(model.bundle, bars, model.cfg)
    store = BarStore(db_url)
    if store.dialect != "sqlite":  # a shared server: drop what an earlier run left
        for sym in bars:
            store.delete(sym, "1d")
    head = 60
    for sym, frame in bars.items():
        store.write(frame.iloc[:head], sym, "1d")
    session = f"sql{os.getpid()}_{int(time.time())}"
    args = ["paper", "run", "--model", in_ws["name"], "--session", session, "--source", "sql",
            "--db", db_url, "--poll", "0.1", "--stale-after", "60",
            "--max-bars", str(n), "--no-report"]  # fmt: skip
    proc = subprocess.Popen(CLI + args, cwd=in_ws["ws"], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        pos = head
        while pos < n:
            time.sleep(0.05)
            step = 17
            for sym, frame in bars.items():  # one symbol after another: partial bars happen
                store.write(frame.iloc[pos : pos + step], sym, "1d")
            pos += step
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    st = Ledger(db_url).status(session)
    assert st["bars_processed"] == n and st["state"] == "stopped"
    assert st["equity"] == pytest.approx(float(expected.equity[-1]), rel=1e-6)
    assert Ledger(db_url).equity_of(session)["equity"].to_numpy() == pytest.approx(
        expected.equity, rel=1e-9
    )


@pytest.mark.slow
def test_sql_feed_followed_while_another_process_appends(in_ws, tmp_path):
    _follow_sql(in_ws, f"sqlite:///{tmp_path / 'bars.db'}", n=in_ws["n_bars"])


@pytest.mark.slow
@pytest.mark.postgres
def test_sql_feed_on_postgres(in_ws, pg_url):
    """The same on PostgreSQL (bars and ledger), over fewer bars (about 45 s on a loaded
    2-core machine, mostly the subprocess's start)."""
    _follow_sql(in_ws, pg_url, n=100)


# ------------------------------------------------------------------------------- errors
def _one_line_error(capsys, args: list[str]) -> str:
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.startswith("error:") and "\n" not in err, err
    return err


def test_bad_input_is_one_line_before_anything_trades(in_ws, tmp_path, capsys):
    from rl_trading.data.store import BarStore
    from rl_trading.paper import Ledger
    from rl_trading.paper.loop import make_feed

    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    name = in_ws["name"]
    err = _one_line_error(capsys, ["paper", "run", "--model", "no_such_model", "--session", "a",
                                   "--db", db])  # fmt: skip
    assert "unknown model" in err
    # instruments missing from the feed
    bars = make_feed(_resolved(name), "replay").history
    store = BarStore(db)
    store.write(bars["MSFT"], "MSFT", "1d")
    err = _one_line_error(capsys, ["paper", "run", "--model", name, "--session", "b",
                                   "--source", "sql", "--db", db])  # fmt: skip
    assert "GOOGL" in err and "SP500" in err
    # the wrong timeframe: the store has the symbols at 1h only / a file of hourly bars
    hourly = {s: f.set_axis(pd.date_range("2020-01-01", periods=len(f), freq="1h", tz="UTC"))
              for s, f in bars.items()}  # fmt: skip
    db2 = f"sqlite:///{tmp_path / 'hourly.db'}"
    for sym, frame in hourly.items():
        BarStore(db2).write(frame, sym, "1h")
    err = _one_line_error(capsys, ["paper", "run", "--model", name, "--session", "c",
                                   "--source", "sql", "--db", db2])  # fmt: skip
    assert "1h" in err and "1d" in err
    folder = tmp_path / "files"
    folder.mkdir()
    for sym, frame in hourly.items():
        frame.rename_axis("timestamp").to_csv(folder / f"{sym}_1h.csv")
    args = ["paper", "run", "--model", name, "--session", "d", "--source", "file"]
    err = _one_line_error(capsys, [*args, "--data", str(folder), "--db", db])
    assert "apart" in err and "1d" in err
    # a session in use by a live process
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ledger = Ledger(db)
        ledger.acquire("busy", name, "replay", ["MSFT", "GOOGL", "SP500"], "1d")
        with ledger.begin() as conn:
            conn.execute(ledger.sessions.update().values(owner_pid=sleeper.pid))
        err = _one_line_error(capsys, ["paper", "run", "--model", name, "--session", "busy",
                                       "--db", db])  # fmt: skip
        assert "in use" in err
    finally:
        sleeper.kill()
        sleeper.wait()
    # a session resumed on a replay that does not hold its recorded bars
    assert main(["paper", "run", "--model", name, "--session", "e", "--db", db,
                 "--max-bars", "45", "--no-report"]) == 0  # fmt: skip
    err = _one_line_error(capsys, ["paper", "run", "--model", name, "--session", "e",
                                   "--db", db, "--split", "val"])  # fmt: skip
    assert "does not have" in err
    assert Ledger(db).session("e")["bars_processed"] == 45
    for session in ("a", "b", "c", "d", "busy"):  # nothing traded
        row = Ledger(db).session(session)
        assert row is None or (row["bars_processed"] or 0) == 0


# ------------------------------------------------------------------- ledger and controls
@pytest.mark.slow
def test_a_failed_bar_leaves_nothing_and_the_rerun_continues(in_ws, tmp_path, monkeypatch):
    from rl_trading.paper import Ledger, PaperOptions, PaperSession
    from rl_trading.paper.broker import first_decision_bar
    from rl_trading.paper.loop import make_feed

    model = _resolved(in_ws["name"])
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    calls = {"n": 0}
    real = Ledger.write_equity

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 30:
            raise RuntimeError("disk full")
        return real(self, *a, **k)

    monkeypatch.setattr(Ledger, "write_equity", flaky)
    opts = PaperOptions(session="f", max_bars=first_decision_bar(model.cfg) + 40)
    with pytest.raises(RuntimeError):
        PaperSession(model, make_feed(model, "replay"), ledger, opts).run()
    row = ledger.session("f")
    done = row["bars_processed"]
    assert len(ledger.bar_rows("f")["MSFT"]) == done  # the failed bar left no row
    assert len(ledger.equity_of("f")) == 29 and row["state"] == "stopped"
    monkeypatch.setattr(Ledger, "write_equity", real)
    res = PaperSession(model, make_feed(model, "replay"), ledger, PaperOptions("f")).run()
    assert res.status["state"] == "finished"
    assert res.status["equity"] == pytest.approx(float(in_ws["backtest"].equity[-1]), rel=1e-9)


@pytest.mark.slow
def test_kill_switch_flattens_and_halts(in_ws, tmp_path):
    from rl_trading.paper import Ledger, PaperOptions, PaperSession
    from rl_trading.paper.loop import make_feed

    model = _resolved(in_ws["name"])
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    opts = PaperOptions(session="ks", max_drawdown=0.002)
    res = PaperSession(model, make_feed(model, "replay"), ledger, opts).run()
    st = res.status
    assert st["state"] == "halted" and "drawdown" in st["reason"]
    assert all(abs(u) < 1e-9 for u in st["positions"].values())
    assert st["bars_processed"] < in_ws["n_bars"]
    kinds = [e["kind"] for e in ledger.events_of("ks")]
    assert "kill_switch" in kinds


def test_the_kill_switch_halts_only_once_its_flat_order_has_filled(in_ws, tmp_path):
    """A flat order that meets a forward-filled bar does not fill there (the env's rule): the
    session keeps deciding flat and halts once the book is flat. Before, it halted after one
    bar with that position open (a helper's audit)."""
    from rl_trading.paper import Ledger, PaperOptions, PaperSession
    from rl_trading.paper.loop import ReplayFeed, make_feed

    model = _resolved(in_ws["name"])
    hist = {s: f.copy() for s, f in make_feed(model, "replay").history.items()}
    for f in hist.values():
        f["filled"] = False
    opts = dict(max_drawdown=0.002)
    first = Ledger(f"sqlite:///{tmp_path / 'a.db'}")
    PaperSession(model, ReplayFeed(hist), first, PaperOptions("ks", **opts)).run()
    fired = next(e["bar"] for e in first.events_of("ks") if e["kind"] == "kill_switch")
    g = hist["GOOGL"]
    k = g.index.get_loc(pd.Timestamp(fired).tz_localize("UTC"))  # the ledger stores UTC, naive
    for i in range(k + 1, k + 4):  # GOOGL closed for the three bars after the kill switch
        g.iloc[i, [g.columns.get_loc(c) for c in ("open", "high", "low", "close")]] = g[
            "close"].iloc[k]  # fmt: skip
        g.iloc[i, g.columns.get_loc("volume")] = 0.0
        g.iloc[i, g.columns.get_loc("filled")] = True
    ledger = Ledger(f"sqlite:///{tmp_path / 'b.db'}")
    st = PaperSession(model, ReplayFeed(hist), ledger, PaperOptions("ks", **opts)).run().status
    assert st["state"] == "halted" and "drawdown" in st["reason"]
    assert all(abs(u) < 1e-9 for u in st["positions"].values()), st["positions"]
    assert pd.Timestamp(st["last_bar"]) == g.index[k + 4]  # GOOGL's first real bar after


def test_a_stop_loss_exit_is_recorded_as_a_stop_at_its_fill_price():
    """The broker's fills name a stop-loss exit `stop` at the price the engine filled it at
    (the stop level inside the bar), not `rebalance` at the open."""
    from rl_trading.paper.broker import OrderBatch, SimulatedBroker
    from tests.test_env_hierarchical import make_market

    bars = make_market(("AAA", "BBB"), n=200, flat=True)
    a = bars["AAA"]
    a.iloc[120:, [a.columns.get_loc("close"), a.columns.get_loc("low")]] = 45.0
    a.iloc[121:, a.columns.get_loc("open")] = 45.0  # bar 120: open 50, low 45
    cfg = AppConfig()
    cfg.train.window_size, cfg.env.risk_window = 5, 10
    cfg.env.stop_loss_pct, cfg.env.max_correlation_exposure = 0.05, 10.0
    cfg.data.periods_per_year = 252 * 390
    b = SimulatedBroker(cfg, "specialists", {}, ["AAA", "BBB"])
    b.ensure(bars, full=True)
    b.start()
    t, fills = b.env._t, []
    while b.book().stop_losses == 0:
        b.submit(OrderBatch(a.index[t], {x: [1.0] for x in b.env.specialists}))
        t += 1
        _, fills = b.execute(a.index[t])
    assert t == 120
    (stop,) = [f for f in fills if f["symbol"] == "AAA"]
    assert stop["kind"] == "stop" and stop["units_after"] == 0.0
    assert stop["price"] == pytest.approx(50.0 * 0.95)  # at the level, not the 50 open


def test_an_older_ledger_gains_the_traded_column_and_keeps_its_rows(tmp_path):
    import sqlalchemy as sa

    from rl_trading.paper import Ledger
    from rl_trading.paper.report import traded_per_bar

    url = f"sqlite:///{tmp_path / 'old.db'}"
    with sa.create_engine(url).begin() as conn:  # paper_equity as ledgers created it before
        conn.execute(
            sa.text(
                "CREATE TABLE paper_equity (session VARCHAR(128) NOT NULL, ts DATETIME NOT NULL, "
                "equity FLOAT NOT NULL, cash FLOAT NOT NULL, drawdown FLOAT NOT NULL, "
                "exposures TEXT NOT NULL, latency_ms FLOAT NOT NULL, PRIMARY KEY (session, ts))"
            )
        )
        conn.execute(sa.text(
            "INSERT INTO paper_equity VALUES ('s', '2024-01-02 00:00:00', 100.0, 100.0, 0.0, "
            "'[0.0]', 1.0)"))  # fmt: skip
        conn.execute(
            sa.text(
                "CREATE TABLE paper_bars (session VARCHAR(128) NOT NULL, ts DATETIME NOT NULL, "
                "symbol VARCHAR(64) NOT NULL, open FLOAT NOT NULL, high FLOAT NOT NULL, "
                "low FLOAT NOT NULL, close FLOAT NOT NULL, volume FLOAT NOT NULL, "
                "PRIMARY KEY (session, ts, symbol))"
            )
        )
        conn.execute(sa.text(
            "INSERT INTO paper_bars VALUES ('s', '2024-01-02 00:00:00', 'MSFT', 1, 2, 0.5, 1.5, "
            "10)"))  # fmt: skip
    ledger = Ledger(url)
    assert list(ledger.bar_rows("s")["MSFT"].columns) == BAR_COLUMNS  # old rows: real bars
    ts = pd.Timestamp("2024-01-03", tz="UTC")
    with ledger.begin() as conn:
        ledger.write_equity(conn, "s", ts, 101.0, 50.0, 0.0, [0.5], 1.0, traded=50.0)
    eq = ledger.equity_of("s")
    assert np.isnan(eq["traded"].iloc[0]) and eq["traded"].iloc[1] == 50.0
    order = {"fill_ts": str(eq.index[0]), "units_before": 0.0, "units_after": 2.0, "price": 3.0}
    # the old row falls back to its orders, the new one is the recorded notional
    np.testing.assert_array_equal(traded_per_bar(eq, [order]), [6.0, 50.0])
    Ledger(url)  # opened again: nothing to add


def test_restore_brings_back_the_risk_state_and_checks_the_equity(in_ws, tmp_path):
    """A resumed session takes its peak, day and day-start equity from its row (the kill
    switch measures from them) and refuses a ledger whose bars replay to another equity."""
    from rl_trading.paper import Ledger, PaperOptions, PaperSession
    from rl_trading.paper.loop import LedgerMismatch, make_feed

    model = _resolved(in_ws["name"])
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    PaperSession(model, make_feed(model, "replay"), ledger, PaperOptions("r", max_bars=90)).run()
    row = ledger.session("r")
    assert row["peak"] > model.cfg.env.initial_capital and row["day"]
    again = PaperSession(model, make_feed(model, "replay"), ledger, PaperOptions("r"))
    assert again.restore() == 90
    assert again.peak == row["peak"] and again.day == row["day"]
    assert again.day_start == row["day_start_equity"]
    with ledger.begin() as conn:
        ledger.update_session(conn, "r", equity=123.0)
    with pytest.raises(LedgerMismatch, match="123"):
        PaperSession(model, make_feed(model, "replay"), ledger, PaperOptions("r")).restore()


@pytest.mark.slow
def test_a_kill_switch_outlives_the_process_and_holds_until_cleared(in_ws, tmp_path):
    """The process dies right after the bar its kill switch fired on: the restart fills the
    recorded flat decision and halts; the halted session refuses to trade again until
    --clear-halt."""
    from rl_trading.errors import DataError
    from rl_trading.paper import Ledger, PaperOptions, PaperSession
    from rl_trading.paper.ledger import HALTING
    from rl_trading.paper.loop import make_feed

    model = _resolved(in_ws["name"])
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    opts = PaperOptions(session="kc", max_drawdown=0.002)
    ref = PaperSession(model, make_feed(model, "replay"), ledger,
                       PaperOptions(session="ref", max_drawdown=0.002)).run()  # fmt: skip
    assert ref.status["state"] == "halted"

    def die_after_the_kill_switch(_info):
        if ledger.session("kc")["state"] == HALTING:
            raise RuntimeError("process died")

    with pytest.raises(RuntimeError, match="died"):
        PaperSession(model, make_feed(model, "replay"), ledger, opts,
                     on_bar=die_after_the_kill_switch).run()  # fmt: skip
    assert ledger.session("kc")["state"] == HALTING  # kept through the error's release
    res = PaperSession(model, make_feed(model, "replay"), ledger, opts).run()
    st = res.status
    assert st["state"] == "halted" and "drawdown" in st["reason"]
    assert all(abs(u) < 1e-9 for u in st["positions"].values())
    assert st["bars_processed"] == ref.status["bars_processed"]
    assert st["orders"] == [{**o} for o in ref.status["orders"]]
    with pytest.raises(DataError, match="--clear-halt"):
        PaperSession(model, make_feed(model, "replay"), ledger, opts).run()
    assert ledger.request_stop("kc", flatten=False)["state"] == "halted"  # not a way around
    with pytest.raises(DataError, match="--clear-halt"):
        PaperSession(model, make_feed(model, "replay"), ledger, opts).run()
    cleared = PaperSession(model, make_feed(model, "replay"), ledger,
                           PaperOptions(session="kc", clear_halt=True)).run()  # fmt: skip
    assert cleared.status["state"] == "finished"


@pytest.mark.slow
def test_stop_of_a_session_not_running(in_ws, tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'l.db'}"
    main(["paper", "run", "--model", in_ws["name"], "--session", "st", "--db", db,
          "--max-bars", "40", "--no-report"])  # fmt: skip
    assert _status(db, "st", capsys)["state"] == "stopped"
    assert main(["paper", "stop", "--session", "st", "--db", db]) == 0
    err = _one_line_error(capsys, ["paper", "stop", "--session", "st", "--flatten", "--db", db])
    assert "not running" in err
    err = _one_line_error(capsys, ["paper", "stop", "--session", "nope", "--db", db])
    assert "unknown paper session" in err
    # a stopped session resumes where it was
    args = ["paper", "run", "--model", in_ws["name"], "--session", "st", "--db", db]
    assert main([*args, "--no-report"]) == 0
    st = _status(db, "st", capsys)
    assert st["state"] == "finished"
    assert st["equity"] == pytest.approx(float(in_ws["backtest"].equity[-1]), rel=1e-9)


# -------------------------------------------------------------------------------- feeds
def test_complete_bars_handles_duplicates_out_of_order_and_partial_rows():
    from rl_trading.paper.feeds import _after, complete_bars, is_gap

    idx = pd.date_range("2024-01-01", periods=5, freq="1D", tz="UTC")
    row = {"open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 1.0}
    a = pd.DataFrame([row] * 5, index=idx)
    shuffled = pd.concat([a.iloc[[3, 0, 2]], a.iloc[[0]], a.iloc[[1, 4]]])  # + a duplicate
    b = a.drop(idx[2])
    frames = {"A": _after(shuffled, idx[0]), "B": _after(b, idx[0])}
    bars, dropped = complete_bars(frames, ["A", "B"])
    assert [ts for ts, _ in bars] == [idx[1], idx[3], idx[4]]
    assert dropped == [idx[2]]
    # a trailing partial bar is kept back, not dropped
    bars, dropped = complete_bars({"A": a, "B": a.iloc[:3]}, ["A", "B"])
    assert [ts for ts, _ in bars] == list(idx[:3]) and dropped == []
    assert not is_gap(idx[0], idx[0] + pd.Timedelta(days=3), "1d")  # a weekend
    assert is_gap(idx[0], idx[0] + pd.Timedelta(hours=3), "1h")


def test_drift_statistics():
    from rl_trading.paper.drift import DriftMonitor, drifted_features, ks, psi

    rng = np.random.default_rng(0)
    ref = rng.normal(size=5000)
    assert psi(ref, rng.normal(size=2000)) < 0.02
    assert psi(ref, rng.normal(1.0, 1.0, size=2000)) > 0.25
    assert ks(ref, ref) == 0.0 and ks(ref, ref + 10) == 1.0
    both = np.stack([ref[:2000], ref[:2000]], axis=1)
    live = np.stack([rng.normal(size=500), rng.normal(2.0, 1.0, size=500)], axis=1)
    names = [f for f, _, _ in drifted_features(both, live, ["same", "moved"], 0.25)]
    assert names == ["moved"]
    # the session's monitor: the same numbers, the live rows arriving in chunks
    monitor = DriftMonitor(both, ["same", "moved"])
    for chunk in np.array_split(live, 7):
        monitor.add(chunk)
        monitor.drifted(0.25)
    assert monitor.drifted(0.0) == drifted_features(both, live, ["same", "moved"], 0.0)
    assert [f for f, _, _ in monitor.drifted(0.25)] == ["moved"]


@pytest.mark.slow
def test_drift_warning_is_logged_when_live_features_move(in_ws, tmp_path):
    from rl_trading.paper import Ledger, PaperOptions, PaperSession
    from rl_trading.paper.broker import first_decision_bar
    from rl_trading.paper.loop import make_feed

    model = _resolved(in_ws["name"])
    model.cfg.paper.drift_every = 10
    model.cfg.paper.drift_psi = 1e-6  # any difference at all warns
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    opts = PaperOptions(session="dr", max_bars=first_decision_bar(model.cfg) + 20)
    PaperSession(model, make_feed(model, "replay"), ledger, opts).run()
    drift = [e for e in ledger.events_of("dr") if e["kind"] == "drift"]
    assert len(drift) == 2 and "PSI" in drift[0]["message"]


@pytest.mark.slow
def test_onnx_policies_trade_like_the_modules(in_ws, tmp_path):
    from rl_trading.paper import Ledger, PaperOptions, PaperSession, resolve_model
    from rl_trading.paper.loop import make_feed

    model = _resolved(in_ws["name"])
    folder = tmp_path / "onnx"
    for pid in model.bundle.modules:
        out = folder / f"{pid}.onnx"
        assert (
            main(["export", "onnx", "--model", in_ws["name"], "--policy", pid, "--out", str(out)])
            == 0
        )
    onnx_model = resolve_model(in_ws["name"], onnx=folder)
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    res = PaperSession(onnx_model, make_feed(onnx_model, "replay"), ledger, PaperOptions("o")).run()
    assert res.status["equity"] == pytest.approx(float(in_ws["backtest"].equity[-1]), rel=1e-6)
    (folder / "meta.onnx").unlink()
    with pytest.raises(Exception, match="meta.onnx"):
        resolve_model(in_ws["name"], onnx=folder)


@pytest.mark.slow
def test_stop_flatten_of_a_running_session(in_ws, tmp_path, capsys):
    """`paper stop --flatten` reaches a session following a SQL feed: the book goes flat at
    the next bar's open and the session stops; the stopped session is not in use."""
    from rl_trading.data.store import BarStore
    from rl_trading.paper import Ledger
    from rl_trading.paper.loop import make_feed

    bars = make_feed(_resolved(in_ws["name"]), "replay").history
    db = f"sqlite:///{tmp_path / 'bars.db'}"
    store = BarStore(db)
    for sym, frame in bars.items():
        store.write(frame.iloc[:120], sym, "1d")
    args = ["paper", "run", "--model", in_ws["name"], "--session", "run", "--source", "sql",
            "--db", db, "--poll", "0.1", "--stale-after", "120", "--no-report"]  # fmt: skip
    proc = subprocess.Popen(CLI + args, cwd=in_ws["ws"], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        ledger = Ledger(db)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            row = ledger.session("run")
            if row and row["bars_processed"] == 120:
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
        assert any(abs(u) > 0 for u in json.loads(ledger.session("run")["positions"]).values())
        assert main(["paper", "stop", "--session", "run", "--flatten", "--db", db]) == 0
        time.sleep(1.0)
        assert ledger.session("run")["state"] == "running"  # waits for a bar to fill at
        for sym, frame in bars.items():
            store.write(frame.iloc[120:121], sym, "1d")
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    st = _status(db, "run", capsys)
    assert st["state"] == "stopped" and "flatten" in st["reason"]
    assert st["bars_processed"] == 121
    assert all(abs(u) < 1e-9 for u in st["positions"].values())


# ------------------------------------------------------------------------ broker interface
class RecordingBroker:
    """A stand-in for a real broker adapter: takes the decisions, reports its own book."""

    def __init__(self, shadow):
        self.shadow, self.batches, self.cancels = shadow, [], 0

    def submit(self, batch):
        self.batches.append(batch)

    def cancel(self):
        self.cancels += 1

    def positions(self):
        return {s: 1.0 for s in self.shadow.symbols}

    def cash(self):
        return 123.0


def test_an_injected_broker_gets_every_decision_and_reports_the_book(in_ws, tmp_path, capsys):
    from rl_trading.paper import Ledger, PaperOptions, PaperSession
    from rl_trading.paper.broker import Broker, first_decision_bar
    from rl_trading.paper.loop import make_feed

    model = _resolved(in_ws["name"])
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    made = []

    def factory(shadow):
        made.append(RecordingBroker(shadow))
        return made[0]

    opts = PaperOptions(session="inj", max_bars=first_decision_bar(model.cfg) + 30)
    res = PaperSession(model, make_feed(model, "replay"), ledger, opts, broker=factory).run()
    broker = made[0]
    assert isinstance(broker, Broker)
    decisions = ledger.decisions_of("inj")
    assert [b.bar for b in broker.batches] == sorted(decisions)
    assert [b.actions for b in broker.batches] == [decisions[t] for t in sorted(decisions)]
    # the session row reports the broker's book; equity and orders are the shadow's
    assert res.status["positions"] == {s: 1.0 for s in model.symbols}
    assert res.status["cash"] == 123.0
    eq = ledger.equity_of("inj")["equity"].to_numpy()
    np.testing.assert_allclose(eq, in_ws["backtest"].equity[: len(eq)], rtol=1e-9)
    # a class is a factory too; an object without the four methods is refused
    made_by_class = PaperSession(model, make_feed(model, "replay"), ledger,
                                 PaperOptions("cls"), broker=RecordingBroker)  # fmt: skip
    assert isinstance(made_by_class.broker, RecordingBroker)
    with pytest.raises(Exception, match="not a paper Broker"):
        PaperSession(model, make_feed(model, "replay"), ledger, PaperOptions("no"),
                     broker=lambda shadow: object())  # fmt: skip
    # a bad --broker path is one line before anything trades
    db = f"sqlite:///{tmp_path / 'l.db'}"
    args = ["paper", "run", "--model", in_ws["name"], "--db", db, "--session"]
    for i, spec in enumerate(["no_such_module_xyz:make", "json:no_such_factory", "json",
                              "json:dumps"]):  # fmt: skip
        err = _one_line_error(capsys, [*args, f"bad{i}", "--broker", spec])
        assert "broker" in err, err
        assert ledger.session(f"bad{i}") is None or ledger.session(f"bad{i}")["bars_processed"] == 0


def test_the_broker_reads_the_env_through_its_public_book(in_ws):
    """The paper package uses no private env state: `book()`, `flat_actions()`,
    `step(absolute=True)` and `adopt_episode` are the env's public face."""
    import re

    from envs import HierarchicalTradingEnv
    from rl_trading.evaluation.backtest import scalers_from
    from rl_trading.paper.loop import make_feed

    for path in (REPO / "rl_trading" / "paper").glob("*.py"):
        text = path.read_text()
        assert not re.search(r"env\._|_k_[a-z]", text), f"{path.name} reads private env state"
    model = _resolved(in_ws["name"])
    bars = make_feed(model, "replay").history
    env = HierarchicalTradingEnv(model.cfg, bars=bars, mode="joint", eval_mode=True,
                                 scalers=scalers_from(model.bundle.preprocessing))  # fmt: skip
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(15):
        env.step({a: rng.uniform(0, 1, env.action_space(a).shape) for a in env.possible_agents})
    book, summary = env.book(), env.episode_summary()
    assert book.equity == summary["equity"][-1]
    np.testing.assert_array_equal(book.exposures, summary["exposures"][-1])
    assert book.bar == env.first_bar + 15 and np.any(book.units != 0.0)
    env.step(env.flat_actions(), absolute=True)
    assert np.all(env.book().units == 0.0) and np.all(env.book().targets == 0.0)


def test_action_matrix_layout():
    from rl_trading.paper.drift import action_matrix

    decisions = [{"a": [0.1], "meta": [0.2, 0.8]}, {"a": [-0.5], "meta": [1.0, 0.0]}]
    names, rows = action_matrix(decisions, ["a", "meta"])
    assert names == ["a", "meta[0]", "meta[1]"]
    np.testing.assert_array_equal(rows, [[0.1, 0.2, 0.8], [-0.5, 1.0, 0.0]])


@pytest.mark.slow
def test_action_drift_warns_when_live_actions_part_from_validation(in_ws, tmp_path):
    """The policy's own actions on its validation bars do not warn; a policy that acts
    unlike its validation self (here: stuck at one action) does."""
    from rl_trading.evaluation.backtest import PolicyBundle
    from rl_trading.paper import Ledger, PaperOptions, PaperSession
    from rl_trading.paper.loop import make_feed

    class Stuck:
        def act(self, obs):
            return np.full((len(obs), 1), 0.9, dtype=np.float32)

    model = _resolved(in_ws["name"])
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    same = PaperSession(model, make_feed(model, "replay", split="val"), ledger,
                        PaperOptions("same"))  # fmt: skip
    # one check, at the last bar: the live actions are the validation actions
    model.cfg.paper.drift_every = len(same._validation_actions()) + 1
    same.run()
    kinds = [e["kind"] for e in same.ledger.events_of("same")]
    assert "action_drift" not in kinds, ledger.events_of("same")
    model.cfg.paper.drift_every = 30
    session = PaperSession(model, make_feed(model, "replay"), ledger, PaperOptions("stuck"))
    modules = dict(session.policy.modules)
    modules.update({p: Stuck() for p in modules if p != "meta"})
    session.policy = PolicyBundle(modules, session.policy.preprocessing)
    session.run()
    drift = [e for e in ledger.events_of("stuck") if e["kind"] == "action_drift"]
    assert drift and "specialist_" in drift[0]["message"] and "PSI" in drift[0]["message"]


# ----------------------------------------------------------------------- streamed arrays
def test_streamed_features_and_covariance_equal_the_batch_bit_for_bit():
    """The live path's O(1) twins: `MarketStream` rows are `prepare_instrument`'s (pandas
    rolling / EMA kernels, the scaler), flat prices and zero volume included, and
    `RollingCovariance` rows are `rolling_covariance`'s (`RollingVariance` rows its diagonal)."""
    from envs.common import prepare_instrument
    from envs.risk import RollingCovariance, RollingVariance, rolling_covariance
    from rl_trading.data import synthetic_market
    from rl_trading.paper.incremental import MarketStream

    syms = ["A", "B", "C"]
    market = synthetic_market(syms, n_bars=1500, seed=3, timeframe="1d")
    flat = market["B"].copy()
    flat.iloc[500:540, :4] = flat.iloc[500]["close"]  # a halted stretch
    flat.iloc[600:700, 4] = 0.0  # no volume
    market["B"] = flat
    scalers = [prepare_instrument(market[s].iloc[:400], None, s).scaler for s in syms]
    ohlcv = np.stack(
        [market[s][["open", "high", "low", "close", "volume"]].to_numpy() for s in syms], axis=1
    )
    stream = MarketStream(scalers)
    rows = np.stack([stream.push(bar) for bar in ohlcv], axis=1)
    for i, (sym, scaler) in enumerate(zip(syms, scalers, strict=True)):
        np.testing.assert_array_equal(rows[i], prepare_instrument(market[sym], scaler).features)
    close = ohlcv[:, :, 3]
    rets = np.zeros_like(close)
    rets[1:] = close[1:] / close[:-1] - 1.0
    cov = RollingCovariance(len(syms), 60)
    np.testing.assert_array_equal(np.stack([cov.push(r) for r in rets]),
                                  rolling_covariance(rets, 60))  # fmt: skip
    # the sizing window's variances (env.vol_horizon_years): the covariance's diagonal
    batch = rolling_variance(rets, 365)
    np.testing.assert_array_equal(batch, np.einsum("tii->ti", rolling_covariance(rets, 365)))
    var = RollingVariance(len(syms), 365)
    np.testing.assert_array_equal(np.stack([var.push(r) for r in rets]), batch)


def test_torch_policy_acts_like_the_backtest(in_ws):
    """The paper path's direct forward gives the backtest's actions (compute_actions)."""
    from policies import compute_actions
    from rl_trading.paper.model import TorchPolicy

    model = _resolved(in_ws["name"])
    rng = np.random.default_rng(0)
    for pid, module in model.bundle.modules.items():
        policy = TorchPolicy(module)
        obs = rng.normal(0.0, 3.0, (7, module.observation_space.shape[0])).astype(np.float32)
        assert policy.direct, pid
        np.testing.assert_array_equal(policy.act(obs), compute_actions(module, obs))


def test_a_live_session_resumes_through_the_streams(in_ws, tmp_path):
    """A live-feed session stopped and run again restores its bars through the streamed
    path (the recorded decisions re-applied) and goes on exactly as the backtest."""
    from rl_trading.paper import Ledger, PaperOptions, PaperSession
    from rl_trading.paper.broker import first_decision_bar
    from rl_trading.paper.loop import make_feed

    model = _resolved(in_ws["name"])
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    first = first_decision_bar(model.cfg)
    opts = PaperOptions("lr", max_bars=first + 15, prebuild=False)
    PaperSession(model, make_feed(model, "replay"), ledger, opts).run()
    again = PaperSession(model, make_feed(model, "replay"), ledger,
                         PaperOptions("lr", max_bars=20, prebuild=False))  # fmt: skip
    res = again.run()
    assert again.sim.streamed and res.status["bars_processed"] == first + 35
    eq = ledger.equity_of("lr")["equity"].to_numpy()
    assert len(eq) == 35  # the first decision bar and 34 more
    np.testing.assert_array_equal(eq, in_ws["backtest"].equity[: len(eq)])


@pytest.mark.parametrize(
    "sets",
    [
        [],
        ["env.vol_target=0.15", "env.benchmark=vol_target"],
        ["env.benchmark=buy_and_hold", "env.risk_limits=active"],
        ["env.cross_sectional=true"],
        ["env.trend_windows=[5, 120]", "env.cross_sectional=true"],
        ["env.vol_target=0.05", "env.benchmark=vol_target", "env.vol_horizon_years=0.5"],
        ["env.vol_horizon_years=null"],  # sized over risk_window: no size_var
    ],
)
def test_set_bar_writes_the_rows_a_batch_env_has(sets):
    """`HierarchicalTradingEnv.set_bar` over placeholder rows gives every kernel array the
    rows an env built over the real bars has (vol-targeted sizes and a benchmark included)."""
    from envs import HierarchicalTradingEnv
    from rl_trading.data import synthetic_market
    from rl_trading.paper.broker import _padded

    cfg = load_config(CONFIG_DIR / "quickstart.yaml", ["data.symbols=[A, B, C]", *sets])
    bars = synthetic_market(["A", "B", "C"], n_bars=400, seed=1, timeframe="1d")
    full = HierarchicalTradingEnv(cfg, bars=bars, mode="joint", eval_mode=True)
    k = 300
    live = HierarchicalTradingEnv(cfg, bars=_padded({s: f.iloc[:k] for s, f in bars.items()}, 60),
                                  mode="joint", eval_mode=True, scalers=full.scalers)  # fmt: skip
    live.reset(seed=0)
    sized = None  # env.vol_horizon_years: the sizing window's covariance, as the broker streams
    if full.size_window != cfg.env.risk_window:
        closes = np.stack([bars[s]["close"].to_numpy() for s in bars], axis=1)
        rets = np.zeros_like(closes)
        rets[1:] = closes[1:] / closes[:-1] - 1.0
        sized = rolling_variance(rets, full.size_window)
        assert full.size_window == round(cfg.env.vol_horizon_years * full.periods_per_year)
        with pytest.raises(ValueError, match="size_var"):
            own = full._feat_all[:, k, : len(FEATURE_COLUMNS)]
            live.set_bar(k, np.ones((3, 4)), np.ones(3, bool), own, full._k_cov[k])
    for t in range(k, k + 50):
        ohlc = np.stack([bars[s][["open", "high", "low", "close"]].to_numpy()[t] for s in bars])
        own = full._feat_all[:, t, : len(FEATURE_COLUMNS)]  # cross-sectional gaps: set_bar's
        size_var = sized[t] if sized is not None else None
        live.set_bar(t, ohlc, np.ones(3, bool), own, full._k_cov[t], size_var)
    end = k + 50
    for name in ("_k_market", "_k_cov", "_k_corr", "_k_ann_vol", "_corr_ut", "_k_feat"):
        a, b = getattr(live, name), getattr(full, name)
        if name == "_k_feat":
            a, b = a.reshape(3, live.n_bars, -1)[:, :end], b.reshape(3, full.n_bars, -1)[:, :end]
        else:
            a, b = a[:end], b[:end]
        np.testing.assert_array_equal(a, b, err_msg=name)
    with pytest.raises(ValueError):
        live.set_bar(live.book().bar, ohlc, np.ones(3, bool), own, full._k_cov[0])


def test_the_live_broker_sizes_from_the_horizon_volatility():
    """With env.vol_horizon_years the simulated broker streams the sizing window's covariance
    too: the env it grows bar by bar has the sizes and benchmark of one built over all bars."""
    from envs import HierarchicalTradingEnv
    from rl_trading.data import synthetic_market
    from rl_trading.paper import SimulatedBroker

    sets = ["data.symbols=[A, B]", "data.periods_per_year=252", "env.vol_target=0.05",
            "env.benchmark=vol_target", "env.vol_horizon_years=0.5"]  # fmt: skip
    cfg = load_config(CONFIG_DIR / "quickstart.yaml", sets)
    bars = synthetic_market(["A", "B"], n_bars=300, seed=3, timeframe="1d")
    full = HierarchicalTradingEnv(cfg, bars=bars, mode="joint", eval_mode=True)
    assert full.size_window == 126 > cfg.env.risk_window
    sim = SimulatedBroker(cfg, "joint", full.scalers, ["A", "B"])
    for t, ts in enumerate(bars["A"].index):
        sim.add_bar(ts, {s: bars[s].iloc[t].to_dict() for s in bars})
        if t >= 150:  # a history first (as a session starts), then bar by bar
            sim.ensure_live()
    assert sim.streamed and sim.rebuilds < 5
    np.testing.assert_array_equal(sim.env._k_market[:300], full._k_market)
    # the horizon changed the sizes (a 60-bar window gives others)
    short = HierarchicalTradingEnv(cfg.model_copy(update={"env": cfg.env.model_copy(
        update={"vol_horizon_years": None})}), bars=bars, mode="joint", eval_mode=True)  # fmt: skip
    assert not np.array_equal(short._sizes[200:], full._sizes[200:])


def test_file_feed_waits_for_a_half_written_line_and_stops_on_a_broken_file(tmp_path):
    from rl_trading.errors import DataError
    from rl_trading.paper.feeds import FileFeed

    index = pd.date_range("2024-01-01", periods=6, freq="1D", tz="UTC", name="timestamp")
    close = np.linspace(100.0, 105.0, 6)
    frame = pd.DataFrame({"open": close, "high": close + 1, "low": close - 1, "close": close,
                          "volume": 1e3}, index=index)  # fmt: skip
    path = tmp_path / "MSFT_1d.csv"
    text = frame.to_csv()
    path.write_text(text + "2024-01-07T00:00:00+00:00,106.0,10")  # a writer mid-append
    feed = FileFeed(path, ["MSFT"])
    got = feed.poll(None)["MSFT"]
    assert list(got.index) == list(index)  # the whole rows, the partial one waits
    path.write_text(text + "2024-01-07T00:00:00+00:00,106.0,107.0,105.0,106.0,1000.0\n")
    assert len(feed.poll(index[-1])["MSFT"]) == 1
    lines = text.splitlines()
    path.write_text("\n".join([*lines[:3], lines[2], *lines[3:]]) + "\n")  # a duplicated row
    for _ in range(FileFeed.FAIL_POLLS - 1):  # a file being rewritten gets a few polls
        assert feed.poll(None)["MSFT"].empty
    with pytest.raises(DataError, match="MSFT_1d.csv") as err:
        feed.poll(None)
    assert "\n" not in str(err.value)


def test_an_injected_broker_gets_a_decision_only_once_its_bar_committed(
    in_ws, tmp_path, monkeypatch
):
    """A bar whose commit fails sends nothing to the broker; the rerun asks the policy again
    and sends that decision: every recorded decision reaches the broker exactly once."""
    from rl_trading.paper import Ledger, PaperOptions, PaperSession
    from rl_trading.paper.broker import first_decision_bar
    from rl_trading.paper.loop import make_feed

    model = _resolved(in_ws["name"])
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    broker = {}
    real = Ledger.write_equity
    calls = {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 30:
            raise RuntimeError("disk full")
        return real(self, *a, **k)

    def factory(shadow):
        broker.setdefault("it", RecordingBroker(shadow)).shadow = shadow
        return broker["it"]

    monkeypatch.setattr(Ledger, "write_equity", flaky)
    opts = PaperOptions(session="once", max_bars=first_decision_bar(model.cfg) + 40)
    with pytest.raises(RuntimeError):
        PaperSession(model, make_feed(model, "replay"), ledger, opts, broker=factory).run()
    monkeypatch.setattr(Ledger, "write_equity", real)
    PaperSession(model, make_feed(model, "replay"), ledger, opts, broker=factory).run()
    sent = [b.bar for b in broker["it"].batches]
    decisions = ledger.decisions_of("once")
    assert sent == sorted(decisions)  # each once, in order, none of the failed bar's twice


def test_forward_filled_bars_keep_their_flag_in_the_ledger_and_the_report(in_ws, tmp_path):
    """align's forward-filled bars (nothing fills on them) are stored with their flag, so the
    report's backtest of the recorded bars and a rebuilt history trade as the session did."""
    from rl_trading.evaluation.backtest import run_policy
    from rl_trading.paper import Ledger, PaperOptions, PaperSession
    from rl_trading.paper.loop import ReplayFeed, make_feed
    from rl_trading.paper.report import write_report

    model = _resolved(in_ws["name"])
    hist = {s: f.copy() for s, f in make_feed(model, "replay").history.items()}
    for f in hist.values():
        f["filled"] = False
    g = hist["GOOGL"]
    for i in range(150, len(g), 7):  # GOOGL closed on these days: the previous close, held
        g.iloc[i, [g.columns.get_loc(k) for k in ("open", "high", "low", "close")]] = g[
            "close"].iloc[i - 1]  # fmt: skip
        g.iloc[i, g.columns.get_loc("volume")] = 0.0
        g.iloc[i, g.columns.get_loc("filled")] = True
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    res = PaperSession(model, ReplayFeed(hist), ledger, PaperOptions("ff")).run()
    bt, _ = run_policy(model.bundle, hist, model.cfg, seed=model.cfg.seed)
    assert res.status["equity"] == pytest.approx(float(bt.equity[-1]), rel=1e-9)
    stored = ledger.bar_rows("ff")
    assert stored["GOOGL"]["filled"].sum() == g["filled"].sum() > 0
    assert not stored["MSFT"]["filled"].any()
    info = write_report(model, ledger, "ff", tmp_path / "rep", mlflow=False)
    assert info["parity_rel_diff"] < 1e-9


def test_file_feed_refuses_two_files_of_one_symbol(tmp_path) -> None:
    """A folder with msft_1d.csv and msft_1m.csv fed whichever sorted last; now both named."""
    from rl_trading.errors import DataError
    from rl_trading.paper.feeds import FileFeed

    for name in ("msft_1d.csv", "msft_1m.csv", "googl_1d.csv"):
        (tmp_path / name).write_text("timestamp,open,high,low,close,volume\n")
    with pytest.raises(DataError, match=r"msft_1d\.csv and .*msft_1m\.csv are both bars of MSFT"):
        FileFeed(tmp_path, ["MSFT", "GOOGL"])
