"""The one copy of the trading rules: execution, costs, stops, borrow, risk limits, rewards.

Every environment (the hierarchical env, the single-instrument env), the baselines
(`rl_trading.evaluation.baselines.simulate_weights`) and anything else that turns target
exposures into fills calls these functions; nothing else implements a fill, a cost, a stop or a
risk limit. They are plain Python on numpy arrays, compiled with numba when it is installed
(``RL_TRADING_NUMBA=0`` runs the very same functions uncompiled, e.g. to step through them in a
debugger). Exposures are signed fractions of equity; prices are positive and finite.

The rules (`docs/architecture.md` has the prose):

* **Timing**: a target decided after bar t's close fills at bar t+1's open and is marked at
  its close (`fill_orders`, then `mark`).
* **Costs**: every fill pays ``|traded notional| x rate`` in cash, rate = fee + (slippage +
  spread / 2) bps (`envs.execution.CostModel.rate`).
* **Gaps**: nothing fills on a forward-filled bar (``real`` false): the order waits, the latest
  target fills at the instrument's next real bar; no stop fires there.
* **No-trade band** (`trades`): an instrument is re-traded only when its target moved by more
  than ``band`` x its full position size since its last traded target, or goes to flat.
* **Borrow** (`charge_borrow`): shorts pay ``|short notional at the open| x borrow`` per bar.
* **Stops** (`stop_losses`): a position whose bar trades through ``entry x (1 -/+ s)`` is closed
  at that level or at the open when it gapped through it (the worse price), paying the rate.
* **Risk limits** (`risk_limits`): sector, correlation and VaR caps, each only scaling orders
  down and each counted (env.risk_limits active: the sector and correlation caps scale the
  active weights around the benchmark instead, in both directions).
* **Rewards**: the specialists' proposal reward (`proposal_rewards`, rolling Sharpe of the
  proposal's own return) or executed reward (`executed_rewards`, the held position's P&L in
  risk units), optionally relative to a benchmark position; costs optionally amortised.

`step` composes them for one bar of the hierarchical env, `step_single` for the
single-instrument env and `simulate_targets` for a baseline's whole target schedule.
Array layouts are named by the ``P_*`` (parameters), ``S_*`` (scalars), ``M_*`` (market rows),
``C_*`` (counters) and ``R_*`` (state rows) indices below.
"""

from __future__ import annotations

import math
import os

import numpy as np

__all__ = [
    "COMPILED",
    "active_penalty",
    "charge_borrow",
    "fill_orders",
    "observe",
    "risk_limits",
    "simulate_targets",
    "step",
    "step_single",
    "stop_losses",
    "trades",
]

# par: float64 parameters
P_MAX_POS, P_STOP, P_RATE, P_MAX_VAR, P_Z, P_MAX_CORR, P_MAX_SECTOR = 0, 1, 2, 3, 4, 5, 6
P_USE_CORR, P_N_SECTORS, P_DIV_BONUS, P_CAPITAL, P_META, P_BORROW = 7, 8, 9, 10, 11, 12
P_EXECUTED, P_AMORTIZE, P_END = 13, 14, 15  # specialist_reward=executed, cost amortisation
P_BAND = 16  # env.rebalance_band (fraction of the full position size)
P_RELATIVE = 17  # 1: actions are active weights around the benchmark (env.benchmark)
P_LONG_ONLY = 18  # 1: no short exposure (env.allow_short false)
P_TE_WEIGHT = 19  # reward.tracking_error_weight (benchmark-relative rewards)
P_ACTIVE_LIMITS = 20  # 1: sector / correlation limits on the active weights (env.risk_limits)
P_ACTIVE_SCALE = 21  # env.active_scale: tilts are this fraction of weight x proposal x full size
N_PAR = 22
# sc: float64 scalars, then the n specialist rewards of the last step
S_CASH, S_EQUITY, S_PEAK, S_VAR, S_COST, S_COSTS, S_DIV, S_BREACH = 0, 1, 2, 3, 4, 5, 6, 7
S_BORROW, S_BORROWS, S_BENCH_RET = 8, 9, 10
N_SC = 11
# mk: market rows of bar t (T, N_MK, n); M_SCALE: full position size (max_position_size, or
# the vol-targeted size), M_BENCH: the benchmark's exposure (0 without a benchmark), both
# fractions of equity
M_OPEN, M_CLOSE, M_GAP, M_INTRA, M_VOL_FLOOR, M_MEAN_VOL, M_LOW, M_HIGH, M_REAL = range(9)
M_SCALE, M_BENCH = 9, 10
N_MK = 11
# cnt: int64 counters (the first five in the order of the env's totals) and ring-buffer state
C_STOP, C_SECTOR, C_CORR, C_VAR, C_BREACH, C_RS_I, C_RS_N = 0, 1, 2, 3, 4, 5, 6
N_CNT = 7
# state rows: units, entry prices, bars in position, executed target exposures, targets x,
# allocations, scratch, new units, the specialists' cost debts, executed-P&L scratch (3 rows),
# the price each stop-loss of the last step filled at (0: none)
R_UNITS, R_ENTRY, R_BARS, R_TARGET, R_X, R_ALLOC, R_TMP, R_NEW = 0, 1, 2, 3, 4, 5, 6, 7
R_DEBT, R_VALUE0, R_FLOW, R_TCOST, R_STOP_PX = 8, 9, 10, 11, 12
N_STATE = 13
SPEC_STATE = 5


# ------------------------------------------------------------------------------------ rules
def trades(x, held, band):
    """Whether an instrument with new target exposure x trades, given the exposure `held` at
    the decision's close (units x close / equity: the book as it drifted, not the last
    order): any difference without a band; with one (band = env.rebalance_band x full size,
    > 0) a difference beyond it, or an exit to flat. So a target held still is rebalanced
    once the book drifts out of the band, and the neutral action holds the benchmark."""
    if band <= 0.0:
        return x != held
    return abs(x - held) > band or (x == 0.0 and held != 0.0)


def held_exposure(units, close, equity):
    """Exposure of `units` at `close` as a fraction of `equity` (0 when equity is not > 0)."""
    if equity > 0.0:
        return units * close / equity
    return 0.0


def fill_orders(opn, want, x, cash, units, entry, bars, new_units, rate, flow, tcost, executed):
    """Fill the instruments in `want` at their target exposures x at the open `opn`.

    Units = x x max(equity at the open, 0) / open; costs ``|delta| x open x rate``; the entry
    price averages in when a position grows on the same side, resets when it flips or opens;
    bars in position reset on a flip or a close. Returns (cash, cost, traded notional);
    `executed`: per instrument cash flows and costs are added to `flow` / `tcost`.
    """
    n = units.shape[0]
    acc = 0.0
    for i in range(n):
        acc += units[i] * opn[i]
    eq_open = cash + acc
    cap = eq_open if eq_open > 0.0 else 0.0
    traded = 0.0
    cash_flow = 0.0
    for i in range(n):
        new_units[i] = x[i] * (cap / opn[i]) if want[i] else units[i]
        delta = new_units[i] - units[i]
        traded += abs(delta) * opn[i]
        cash_flow += delta * opn[i]
        if executed:
            flow[i] += delta * opn[i]
            tcost[i] += abs(delta) * opn[i] * rate
    cost = traded * rate
    cash -= cash_flow + cost
    for i in range(n):
        u, nu = units[i], new_units[i]
        if u * nu > 0.0:
            if abs(nu) > abs(u):
                entry[i] = (u * entry[i] + (nu - u) * opn[i]) / nu
        else:
            entry[i] = opn[i] if nu != 0.0 else 0.0
            bars[i] = 0.0
        units[i] = nu
    return cash, cost, traded


def charge_borrow(opn, units, borrow, flow, executed):
    """Borrow cost of the shorts held from this open: |short notional| x `borrow` per bar."""
    if borrow == 0.0:
        return 0.0
    acc = 0.0
    for i in range(units.shape[0]):
        if units[i] < 0.0:
            acc += units[i] * opn[i]
            if executed:
                flow[i] -= units[i] * opn[i] * borrow
    return -acc * borrow


def stop_losses(opn, low, high, real, units, entry, bars, target, stop, rate, flow, tcost,
                executed, fill_px):  # fmt: skip
    """Stop-losses within the bar: returns (cash change, cost, stops fired, traded notional).

    A long is hit when the low reaches entry x (1 - s) and fills at min(level, open); a short
    when the high reaches entry x (1 + s), at max(level, open); never on a forward-filled bar.
    A stopped instrument is flat with its last traded target reset to 0; `fill_px` gets the
    price each stop filled at (0 where none fired), for the paper ledger's fills.
    """
    for i in range(units.shape[0]):
        fill_px[i] = 0.0
    if stop <= 0.0:
        return 0.0, 0.0, 0, 0.0
    n_hit = 0
    traded = 0.0
    value = 0.0
    for i in range(units.shape[0]):
        u = units[i]
        if u == 0.0 or not real[i]:
            continue
        if u > 0.0:
            level = entry[i] * (1.0 - stop)
            hit = low[i] <= level
            px = level if level <= opn[i] else opn[i]
        else:
            level = entry[i] * (1.0 + stop)
            hit = high[i] >= level
            px = level if level >= opn[i] else opn[i]
        if hit:
            n_hit += 1
            fill_px[i] = px
            traded += abs(u) * px
            value += u * px
            if executed:
                flow[i] -= u * px
                tcost[i] += abs(u) * px * rate
            units[i] = 0.0
            entry[i] = 0.0
            bars[i] = 0.0
            target[i] = 0.0
    cost = traded * rate
    return value - cost, cost, n_hit, traded


def risk_limits(x, scale, bench, cov, corr, sector_ids, par, alloc, tmp, cnt):
    """Scale target exposures x down to the sector, correlation and VaR limits (in place).

    With env.risk_limits active in benchmark-relative mode the sector and correlation limits
    scale the active weights x - bench (the agents' bets; the neutral action then holds the
    benchmark whole), else the whole book; VaR always caps the whole book. Scaling an active
    underweight moves it back toward the benchmark, so in that mode a cap can raise an
    exposure (a bet against the benchmark is a bet like any other).
    Allocations are |x| / full size. Sector: a sector's allocations sum to at most
    max_sector_allocation (scaled pro rata). Correlation: the correlated allocation
    ``c_i = sum_j max(0, rho_ij sign(x_i) sign(x_j)) a_j`` is at most max_correlation_exposure.
    VaR: ``z sqrt(x' Sigma x)`` at most max_portfolio_var. Returns the VaR after the limits.
    """
    n = x.shape[0]
    active = par[P_ACTIVE_LIMITS] != 0.0 and par[P_RELATIVE] != 0.0
    if active:
        for i in range(n):
            x[i] -= bench[i]
    total = 0.0
    for i in range(n):
        alloc[i] = abs(x[i]) / scale[i]
        total += alloc[i]
    n_sectors = int(par[P_N_SECTORS])
    max_sector = par[P_MAX_SECTOR]
    if n_sectors > 0 and total > max_sector:
        for sid in range(n_sectors):
            sector_total = 0.0
            for i in range(n):
                if sector_ids[i] == sid:
                    sector_total += alloc[i]
            if sector_total > max_sector + 1e-12:
                f = max_sector / sector_total
                for i in range(n):
                    if sector_ids[i] == sid:
                        x[i] *= f
                cnt[C_SECTOR] += 1
        total = 0.0
        for i in range(n):
            alloc[i] = abs(x[i]) / scale[i]
            total += alloc[i]
    max_corr = par[P_MAX_CORR]
    if par[P_USE_CORR] != 0.0 and total > max_corr:
        for i in range(n):
            si = np.sign(x[i])
            acc = 0.0
            for j in range(n):
                acc += max(corr[i, j] * (si * np.sign(x[j])), 0.0) * alloc[j]
            tmp[i] = acc
        for i in range(n):
            if tmp[i] > max_corr + 1e-12:
                x[i] *= max_corr / tmp[i]
                cnt[C_CORR] += 1
    if active:
        for i in range(n):
            x[i] += bench[i]
    v = 0.0
    for j in range(n):
        acc = 0.0
        for i in range(n):
            acc += x[i] * cov[i, j]
        v += acc * x[j]
    var_after = par[P_Z] * math.sqrt(v) if v > 0 else 0.0
    max_var = par[P_MAX_VAR]
    if var_after > max_var:
        f = max_var / var_after
        for i in range(n):
            x[i] *= f
        var_after = max_var
        cnt[C_VAR] += 1
    return var_after


def active_penalty(z, te_w):
    """The active-risk (tracking-error) penalty of an active return z in risk units (active
    return / per-bar volatility): te_w x z^2 (reward.tracking_error_weight)."""
    return te_w * z * z


def amortize(debt, charged, k, last):
    """Add `charged` to a cost debt and return the part paid now: 1/k of it, all on the last
    step (reward.cost_amortization_bars; the sums over an episode are unchanged)."""
    debt += charged
    pay = debt if last else debt / k
    return debt - pay, pay


def proposal_rewards(t, mk, rate, prop, prev_prop, sc, cnt, rs, debt, k, last):
    """Specialist rewards from their proposals: the return of holding the proposal (per unit
    of the specialist's capital, costs on proposal changes) over the rolling std of those
    returns, floored by the instrument's causal per-bar volatility (a rolling Sharpe)."""
    t1 = t + 1
    n = prop.shape[0]
    w = rs.shape[0] - 2
    ri = cnt[C_RS_I]
    full = cnt[C_RS_N] == w
    if not full:
        cnt[C_RS_N] += 1
    cnt_n = cnt[C_RS_N]
    for i in range(n):
        r = prev_prop[i] * mk[t1, M_GAP, i] + prop[i] * mk[t1, M_INTRA, i]
        charged = rate * abs(prop[i] - prev_prop[i])
        if k > 1.0:
            debt[i], pay = amortize(debt[i], charged, k, last)
            r -= pay
        else:
            r -= charged
        if full:
            old = rs[ri, i]
            rs[w, i] -= old
            rs[w + 1, i] -= old * old
        rs[ri, i] = r
        rs[w, i] += r
        rs[w + 1, i] += r * r
        sd = 0.0
        if cnt_n >= 2:
            mean = rs[w, i] / cnt_n
            sd = math.sqrt(max(rs[w + 1, i] / cnt_n - mean * mean, 0.0))
        sc[N_SC + i] = r / max(sd, mk[t, M_VOL_FLOOR, i])
    cnt[C_RS_I] = (ri + 1) % w


def executed_rewards(t, mk, units, value0, flow, tcost, eq_prev, sc, debt, k, last, te_w):
    """Specialist rewards from the held positions: each instrument's P&L over the bar (costs
    and borrow included), minus the benchmark position's P&L when there is one, per unit of
    equity x full position size x the instrument's per-bar volatility at t (risk units); with a
    benchmark, minus te_w x that active reward squared (an active-risk penalty)."""
    t1 = t + 1
    for i in range(units.shape[0]):
        if eq_prev <= 0:
            sc[N_SC + i] = 0.0
            continue
        denom = eq_prev * mk[t, M_SCALE, i] * mk[t, M_VOL_FLOOR, i]
        pnl = units[i] * mk[t1, M_CLOSE, i] - value0[i] - flow[i] - tcost[i]
        bench = mk[t, M_BENCH, i]
        if bench != 0.0:
            pnl -= eq_prev * bench * (mk[t1, M_CLOSE, i] / mk[t, M_CLOSE, i] - 1.0)
        r = pnl / denom
        if te_w > 0.0:
            r -= active_penalty(r, te_w)
        if k > 1.0:
            charged = tcost[i] / denom
            debt[i], pay = amortize(debt[i], charged, k, last)
            r += charged - pay
        sc[N_SC + i] = r


def mark(units, close, out):
    """Equity of the positions at `close` (out: the per-instrument values)."""
    acc = 0.0
    for i in range(units.shape[0]):
        out[i] = units[i] * close[i]
        acc += out[i]
    return acc


def targets_of(t, mk, weights, prop, par, x):
    """Target exposures of bar t before the risk limits: weight x proposal x full size; in
    benchmark-relative mode that tilt x env.active_scale, plus the benchmark's exposure (the
    neutral action holds it); never short when the env is long-only."""
    relative = par[P_RELATIVE] != 0.0
    long_only = par[P_LONG_ONLY] != 0.0
    active = par[P_ACTIVE_SCALE]
    for i in range(x.shape[0]):
        xi = weights[i] * prop[i] * mk[t, M_SCALE, i]
        if relative:
            xi = active * xi + mk[t, M_BENCH, i]
        if long_only and xi < 0.0:
            xi = 0.0
        x[i] = xi


# ---------------------------------------------------------------------------- observations
def observe(t, mk, feat_rows, ann_vol, corr_ut, par, state, prop, weights, sc, window,
            out_spec, out_meta):  # fmt: skip
    """Write bar t's specialist observations (n, spec_dim) and the meta observation.

    Specialist: its feature window, then [exposure / full size (minus the benchmark's in
    benchmark-relative mode), proposal, unrealised P&L fraction, bars in position / 100, meta
    weight]. Meta: [weights (n + 1), exposures / full size (active in relative mode),
    equity / capital - 1, drawdown, annualised vols (n), correlations (upper triangle),
    proposals (n)].
    """
    n = state.shape[1]
    n_feat_w = out_spec.shape[1] - SPEC_STATE
    stop = (t + 1) * (n_feat_w // window)
    start = stop - n_feat_w
    eq = sc[S_EQUITY]
    relative = par[P_RELATIVE] != 0.0
    for i in range(n):
        for k in range(n_feat_w):
            out_spec[i, k] = feat_rows[i, start + k]
        u = state[R_UNITS, i]
        price = mk[t, M_CLOSE, i]
        entry = state[R_ENTRY, i]
        expo = u * price / eq if eq > 0 else 0.0
        if relative:
            expo -= mk[t, M_BENCH, i]
        out_spec[i, n_feat_w] = expo / mk[t, M_SCALE, i]
        out_spec[i, n_feat_w + 1] = prop[i]
        e = entry if entry > 0 else 1.0
        out_spec[i, n_feat_w + 2] = (price - entry) * np.sign(u) / e
        out_spec[i, n_feat_w + 3] = state[R_BARS, i] * 0.01
        out_spec[i, n_feat_w + 4] = weights[i]
    if par[P_META] == 0.0:
        return
    k = 0
    for i in range(n + 1):
        out_meta[k] = weights[i]
        k += 1
    for i in range(n):
        u = state[R_UNITS, i]
        if eq > 0:
            expo = u * mk[t, M_CLOSE, i] / eq
            if relative:
                expo -= mk[t, M_BENCH, i]
            out_meta[k] = expo / mk[t, M_SCALE, i]
        else:
            out_meta[k] = u
        k += 1
    out_meta[k] = eq / par[P_CAPITAL] - 1.0
    out_meta[k + 1] = 1.0 - eq / sc[S_PEAK]
    k += 2
    for i in range(n):
        out_meta[k] = ann_vol[t, i]
        k += 1
    for i in range(corr_ut.shape[1]):
        out_meta[k] = corr_ut[t, i]
        k += 1
    for i in range(n):
        out_meta[k] = prop[i]
        k += 1


# ------------------------------------------------------------------------------- compositions
def step(t, steps, mk, cov, corr, ann_vol, corr_ut, feat_rows, sector_ids, par, state, prop,
         prev_prop, weights, sc, cnt, rs, hist, window, out_spec, out_meta):  # fmt: skip
    """One bar of the hierarchical env, from bar t to t + 1, in place (see the module doc):
    targets, risk limits, fills, borrow, stops, equity, VaR breach, the history row, the
    specialists' rewards, the meta's diversification term, then bar t + 1's observations."""
    n = state.shape[1]
    t1 = t + 1
    rate = par[P_RATE]
    x = state[R_X]
    units = state[R_UNITS]
    entry = state[R_ENTRY]
    bars = state[R_BARS]
    target = state[R_TARGET]
    tmp = state[R_TMP]
    value0 = state[R_VALUE0]
    flow = state[R_FLOW]
    tcost = state[R_TCOST]
    eq_prev = sc[S_EQUITY]
    cash = sc[S_CASH]
    executed = par[P_EXECUTED] != 0.0
    if executed:
        for i in range(n):
            value0[i] = units[i] * mk[t, M_CLOSE, i]
            flow[i] = 0.0
            tcost[i] = 0.0

    targets_of(t, mk, weights, prop, par, x)
    var_after = risk_limits(x, mk[t, M_SCALE], mk[t, M_BENCH], cov[t], corr[t], sector_ids, par,
                            state[R_ALLOC], tmp, cnt)  # fmt: skip

    # fills at the next open: instruments whose target left the band, on real bars
    band = par[P_BAND]
    want = np.zeros(n, dtype=np.bool_)
    n_want = 0
    for i in range(n):
        held = held_exposure(units[i], mk[t, M_CLOSE, i], eq_prev)
        want[i] = mk[t1, M_REAL, i] != 0.0 and trades(x[i], held, band * mk[t, M_SCALE, i])
        if want[i]:
            n_want += 1
    cost = 0.0
    traded = 0.0
    if n_want:
        cash, cost, traded = fill_orders(mk[t1, M_OPEN], want, x, cash, units, entry, bars,
                                         state[R_NEW], rate, flow, tcost, executed)  # fmt: skip
        for i in range(n):
            if want[i]:
                target[i] = x[i]
    borrow = charge_borrow(mk[t1, M_OPEN], units, par[P_BORROW], flow, executed)
    cash -= borrow
    sc[S_BORROWS] += borrow
    sc[S_BORROW] = borrow
    real = mk[t1, M_REAL] != 0.0
    dcash, sl_cost, n_hit, sl_traded = stop_losses(mk[t1, M_OPEN], mk[t1, M_LOW], mk[t1, M_HIGH],
                                                   real, units, entry, bars, target, par[P_STOP],
                                                   rate, flow, tcost, executed,
                                                   state[R_STOP_PX])  # fmt: skip
    cash += dcash
    cost += sl_cost
    traded += sl_traded
    cnt[C_STOP] += n_hit
    for i in range(n):
        if units[i] != 0.0:
            bars[i] += 1.0
    equity = cash + mark(units, mk[t1, M_CLOSE], tmp)
    sc[S_CASH] = cash
    sc[S_EQUITY] = equity
    if equity > sc[S_PEAK]:
        sc[S_PEAK] = equity
    sc[S_COSTS] += cost
    sc[S_COST] = cost
    breach = eq_prev > 0 and (eq_prev - equity - cost - borrow) / eq_prev > var_after + 1e-12
    if breach:
        cnt[C_BREACH] += 1
    sc[S_BREACH] = 1.0 if breach else 0.0
    sc[S_VAR] = var_after
    # the benchmark's return over the bar (held at its exposures of bar t, close to close)
    bench_ret = 0.0
    for i in range(n):
        if mk[t, M_BENCH, i] != 0.0:
            bench_ret += mk[t, M_BENCH, i] * (mk[t1, M_CLOSE, i] / mk[t, M_CLOSE, i] - 1.0)
    sc[S_BENCH_RET] = bench_ret

    # history row (tmp holds the positions' values)
    row = steps + 1
    hist[row, 0] = equity
    hist[row, 1] = cost
    hist[row, 2] = var_after
    for i in range(n + 1):
        hist[row, 3 + i] = weights[i]
    for i in range(n):
        hist[row, 4 + n + i] = tmp[i] / equity if equity > 0 else 0.0
    hist[row, 4 + 2 * n] = bench_ret
    hist[row, 5 + 2 * n] = traded

    last = equity <= 0.0 or t1 >= par[P_END]
    k = par[P_AMORTIZE]
    if executed:
        te_w = par[P_TE_WEIGHT] if par[P_RELATIVE] != 0.0 else 0.0
        executed_rewards(t, mk, units, value0, flow, tcost, eq_prev, sc, state[R_DEBT], k, last,
                         te_w)  # fmt: skip
    else:
        proposal_rewards(t, mk, rate, prop, prev_prop, sc, cnt, rs, state[R_DEBT], k, last)

    # diversification term of the meta reward: bonus x (1 - Herfindahl) x mean vol at t
    div_term = 0.0
    if par[P_META] != 0.0 and par[P_DIV_BONUS] != 0.0:
        w_tot = 0.0
        dot = 0.0
        for i in range(n):
            a = abs(target[i])
            w_tot += a
            dot += a * a
        div = 0.0
        if w_tot > 1e-12 and math.isfinite(w_tot):
            h = dot / (w_tot * w_tot)
            div = 0.0 if h == 0.0 else 1.0 - h
        div_term = par[P_DIV_BONUS] * div * mk[t, M_MEAN_VOL, 0]
    sc[S_DIV] = div_term

    observe(t1, mk, feat_rows, ann_vol, corr_ut, par, state, prop, weights, sc, window, out_spec,
            out_meta)  # fmt: skip


def step_single(t, exposure, mk, par, state, sc):
    """One bar of the single-instrument env (one instrument, no portfolio limits): the target
    `exposure` (fraction of equity) fills at bar t + 1's open when it left the band, then
    borrow, the stop-loss and the mark at the close. Returns (units traded, traded, stopped,
    units, entry price, bars in position, cost, borrow, equity, traded notional); the env
    counts its stops."""
    t1 = t + 1
    rate = par[P_RATE]
    units = state[R_UNITS]
    target = state[R_TARGET]
    x = state[R_X]
    x[0] = exposure
    before = units[0]
    want = np.zeros(1, dtype=np.bool_)
    held = held_exposure(units[0], mk[t, M_CLOSE, 0], sc[S_EQUITY])
    want[0] = mk[t1, M_REAL, 0] != 0.0 and trades(exposure, held,
                                                   par[P_BAND] * mk[t, M_SCALE, 0])  # fmt: skip
    cash = sc[S_CASH]
    cost = 0.0
    traded = 0.0
    if want[0]:
        cash, cost, traded = fill_orders(mk[t1, M_OPEN], want, x, cash, units, state[R_ENTRY],
                                         state[R_BARS], state[R_NEW], rate, state[R_FLOW],
                                         state[R_TCOST], False)  # fmt: skip
        target[0] = x[0]
    borrow = charge_borrow(mk[t1, M_OPEN], units, par[P_BORROW], state[R_FLOW], False)
    cash -= borrow
    real = mk[t1, M_REAL] != 0.0
    dcash, sl_cost, n_hit, sl_traded = stop_losses(mk[t1, M_OPEN], mk[t1, M_LOW], mk[t1, M_HIGH],
                                                   real, units, state[R_ENTRY], state[R_BARS],
                                                   target, par[P_STOP], rate, state[R_FLOW],
                                                   state[R_TCOST], False,
                                                   state[R_STOP_PX])  # fmt: skip
    cash += dcash
    cost += sl_cost
    traded += sl_traded
    if units[0] != 0.0:
        state[R_BARS, 0] += 1.0
    equity = cash + mark(units, mk[t1, M_CLOSE], state[R_TMP])
    sc[S_CASH] = cash
    sc[S_EQUITY] = equity
    sc[S_COST] = cost
    sc[S_COSTS] += cost
    sc[S_BORROW] = borrow
    sc[S_BORROWS] += borrow
    return (units[0] - before, want[0], n_hit > 0, units[0], state[R_ENTRY, 0],
            state[R_BARS, 0], cost, borrow, equity, traded)  # fmt: skip


def simulate_targets(opens, closes, real, targets, capital, rate, bands):
    """A target-weight schedule ([T, n], decided at close t) through the same fills and costs.
    Where `bands` ([T, n]) is < 0, NaN is "no new order" and an instrument's latest order fills
    at its next real bar's open. Where it is >= 0, the target is re-decided every bar as in the
    envs: it fills at the next open, if that bar is real, when it differs from the exposure
    held at the close by more than the band (:func:`trades`). Returns (equity [T], weights
    [T, n], costs [T], traded notional [T])."""
    t_len, n = closes.shape
    units = np.zeros(n)
    entry = np.zeros(n)
    bars = np.zeros(n)
    new_units = np.zeros(n)
    scratch = np.zeros(n)
    want = np.zeros(n, dtype=np.bool_)
    pending = np.full(n, np.nan)  # latest order per instrument not yet filled
    x = np.zeros(n)
    cash = capital
    equity = np.empty(t_len)
    weights = np.zeros((t_len, n))
    costs = np.zeros(t_len)
    traded = np.zeros(t_len)
    equity[0] = cash
    for t in range(1, t_len):
        n_want = 0
        for i in range(n):
            if bands[t - 1, i] >= 0.0:  # re-decided every bar, banded around the held book
                pending[i] = np.nan
                order = targets[t - 1, i]
                want[i] = (real[t, i] and not np.isnan(order)
                           and trades(order, weights[t - 1, i], bands[t - 1, i]))  # fmt: skip
                x[i] = order if want[i] else 0.0
            else:
                if not np.isnan(targets[t - 1, i]):
                    pending[i] = targets[t - 1, i]
                want[i] = not np.isnan(pending[i]) and real[t, i]
                x[i] = pending[i] if want[i] else 0.0
            if want[i]:
                n_want += 1
        if n_want:
            cash, costs[t], traded[t] = fill_orders(opens[t], want, x, cash, units, entry, bars,
                                                    new_units, rate, scratch, scratch,
                                                    False)  # fmt: skip
            for i in range(n):
                if want[i]:
                    pending[i] = np.nan
        equity[t] = cash + mark(units, closes[t], scratch)
        if equity[t] > 0:
            for i in range(n):
                weights[t, i] = scratch[i] / equity[t]
    return equity, weights, costs, traded


# ------------------------------------------------------------------------------ compilation
def _compile() -> bool:
    """Jit every function above with numba (cached on disk when possible); False without numba
    or with RL_TRADING_NUMBA=0, when the same functions run as plain Python."""
    if os.environ.get("RL_TRADING_NUMBA", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        import numba  # optional accelerator: the rules are the same without it
    except ImportError:
        return False

    def jit(fn):
        try:
            return numba.njit(cache=True)(fn)
        except (RuntimeError, OSError):  # no writable cache location: compile without caching
            return numba.njit(fn)

    g = globals()
    # callees first: a jitted caller binds the jitted callee it finds at compile time
    for name in (
        "trades", "held_exposure", "active_penalty", "fill_orders", "charge_borrow", "stop_losses",
        "risk_limits", "amortize",
        "proposal_rewards", "executed_rewards", "mark", "targets_of", "observe", "step",
        "step_single", "simulate_targets",
    ):  # fmt: skip
        g[name] = jit(g[name])
    return True


try:
    COMPILED = _compile()
except Exception:  # pragma: no cover - a broken numba install must not break the env
    COMPILED = False
