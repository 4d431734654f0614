"""Numba kernels of the hierarchical env's per-step portfolio arithmetic (optional fast path).

One call of :func:`step` does what ``HierarchicalTradingEnv.step`` does with ~100 small numpy
calls: risk limits (envs.risk), fills and costs (envs.execution: no fills on forward-filled
bars, borrow cost of shorts, stop-losses on the bar's low / high at the level or the gap open),
equity, the
specialists' rolling-Sharpe rewards (rl_trading.metrics.RollingSharpeArray), the
diversification term of the meta reward, the history row and both observations, in place on
preallocated float64 arrays. Sums use numpy's pairwise summation (bit-identical to
``np.add.reduce``); dot products and matrix-vector products are sequential loops, which can
differ from numpy's BLAS in the last bit. Compiled eagerly (explicit signatures) and cached on
disk; without numba (or with RL_TRADING_NUMBA=0) ``AVAILABLE`` is False and the env keeps its
numpy path. Array layouts are documented by the ``P_*``, ``S_*`` and ``C_*`` indices below.
"""

from __future__ import annotations

import math
import os

import numpy as np

__all__ = ["AVAILABLE", "MAX_INSTRUMENTS", "observe", "step"]

MAX_INSTRUMENTS = 128  # _pairwise reproduces numpy up to 128 items (one block)

# par: float64 parameters
P_MAX_POS, P_STOP, P_RATE, P_MAX_VAR, P_Z, P_MAX_CORR, P_MAX_SECTOR = 0, 1, 2, 3, 4, 5, 6
P_USE_CORR, P_N_SECTORS, P_DIV_BONUS, P_CAPITAL, P_META, P_BORROW = 7, 8, 9, 10, 11, 12
P_EXECUTED, P_AMORTIZE, P_END = 13, 14, 15  # specialist_reward=executed, cost amortisation
P_BAND = 16  # env.rebalance_band (fraction of the full position size)
N_PAR = 17
# sc: float64 scalars, then the n specialist rewards of the last step
S_CASH, S_EQUITY, S_PEAK, S_VAR, S_COST, S_COSTS, S_DIV, S_BREACH = 0, 1, 2, 3, 4, 5, 6, 7
S_BORROW, S_BORROWS = 8, 9
N_SC = 10
# mk: market rows of bar t (T, N_MK, n); M_SCALE: full position size (max_position_size, or
# the vol-targeted size), fraction of equity
M_OPEN, M_CLOSE, M_GAP, M_INTRA, M_VOL_FLOOR, M_MEAN_VOL, M_LOW, M_HIGH, M_REAL = range(9)
M_SCALE = 9
N_MK = 10
# cnt: int64 counters (the first five in the order of the env's totals) and ring-buffer state
C_STOP, C_SECTOR, C_CORR, C_VAR, C_BREACH, C_RS_I, C_RS_N = 0, 1, 2, 3, 4, 5, 6
N_CNT = 7
# state rows: units, entry prices, bars in position, executed target exposures, scratch (4 rows),
# the specialists' cost debts (reward.cost_amortization_bars), scratch for executed P&L (3 rows)
R_UNITS, R_ENTRY, R_BARS, R_TARGET = 0, 1, 2, 3
R_DEBT = 8
N_STATE = 12
SPEC_STATE = 5


def _pairwise(a, lo, n):
    """numpy's pairwise sum of a[lo:lo + n] (same association, so bit-identical)."""
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    if n <= 128:
        r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
        r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
        i = 8
        stop = n - n % 8
        while i < stop:
            r0 += a[lo + i]
            r1 += a[lo + i + 1]
            r2 += a[lo + i + 2]
            r3 += a[lo + i + 3]
            r4 += a[lo + i + 4]
            r5 += a[lo + i + 5]
            r6 += a[lo + i + 6]
            r7 += a[lo + i + 7]
            i += 8
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            res += a[lo + i]
            i += 1
        return res
    return math.nan  # more than 128 items: the env uses the numpy path (MAX_INSTRUMENTS)


def _npmax(a, b):
    """np.maximum for floats (NaN propagates)."""
    if a != a or b != b:
        return a + b
    return a if a >= b else b


def _observe(t, mk, feat_rows, ann_vol, corr_ut, par, state, prop, weights, sc, window,
             out_spec, out_meta):  # fmt: skip
    """Write bar t's specialist observations (n, spec_dim) and the meta observation."""
    n = state.shape[1]
    n_feat_w = out_spec.shape[1] - SPEC_STATE
    stop = (t + 1) * (n_feat_w // window)
    start = stop - n_feat_w
    eq = sc[S_EQUITY]
    for i in range(n):
        denom = mk[t, M_SCALE, i] * eq
        for k in range(n_feat_w):
            out_spec[i, k] = feat_rows[i, start + k]
        u = state[R_UNITS, i]
        price = mk[t, 1, i]
        entry = state[R_ENTRY, i]
        out_spec[i, n_feat_w] = u * price / denom if eq > 0 else 0.0
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
        denom = mk[t, M_SCALE, i] * eq
        out_meta[k] = u * mk[t, 1, i] / denom if eq > 0 else u
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


def _rolling_sharpe_rewards(t, mk, rate, prop, prev_prop, sc, cnt, rs, debt, amortize, last):
    """Proposal-based specialist rewards into sc: rolling Sharpe (metrics.RollingSharpeArray)
    with the vol floor at t; costs amortised through `debt` when amortize > 1."""
    t1 = t + 1
    n = prop.shape[0]
    w = rs.shape[0] - 2
    ri = cnt[C_RS_I]
    full = cnt[C_RS_N] == w
    if not full:
        cnt[C_RS_N] += 1
    cnt_n = cnt[C_RS_N]
    for i in range(n):
        r = prev_prop[i] * mk[t1, 2, i] + prop[i] * mk[t1, 3, i]
        if amortize > 1.0:
            debt[i] += rate * abs(prop[i] - prev_prop[i])
            pay = debt[i] if last else debt[i] / amortize
            debt[i] -= pay
            r -= pay
        else:
            r -= rate * abs(prop[i] - prev_prop[i])
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
            sd = math.sqrt(_npmax(rs[w + 1, i] / cnt_n - mean * mean, 0.0))
        sc[N_SC + i] = r / _npmax(sd, mk[t, 4, i])
    cnt[C_RS_I] = (ri + 1) % w


def _trades(x, target, band):
    """Whether an instrument with new target exposure x (last traded target `target`) trades:
    any change with no band; beyond the band, or an exit to flat, with one (env.rebalance_band)."""
    if band <= 0.0:
        return x != target
    return abs(x - target) > band or (x == 0.0 and target != 0.0)


def _step(t, steps, mk, cov, corr, ann_vol, corr_ut, feat_rows, sector_ids, par, state, prop,
          prev_prop, weights, sc, cnt, rs, hist, window, out_spec, out_meta):  # fmt: skip
    """One env step from bar t to t + 1 (see the module docstring); returns nothing."""
    n = state.shape[1]
    t1 = t + 1
    rate = par[P_RATE]
    x = state[4]
    alloc = state[5]
    tmp = state[6]
    new_units = state[7]
    units = state[R_UNITS]
    entry = state[R_ENTRY]
    bars = state[R_BARS]
    target = state[R_TARGET]
    eq_prev = sc[S_EQUITY]
    cash = sc[S_CASH]
    executed = par[P_EXECUTED] != 0.0
    value0 = state[9]
    flow = state[10]
    tcost = state[11]
    if executed:
        for i in range(n):
            value0[i] = units[i] * mk[t, 1, i]
            flow[i] = 0.0
            tcost[i] = 0.0

    # ---- risk limits (envs.risk.RiskModel.limit) at bar t
    for i in range(n):
        x[i] = weights[i] * prop[i] * mk[t, M_SCALE, i]
        alloc[i] = abs(x[i]) / mk[t, M_SCALE, i]
    total = _pairwise(alloc, 0, n)
    n_sectors = int(par[P_N_SECTORS])
    max_sector = par[P_MAX_SECTOR]
    if n_sectors > 0 and total > max_sector:
        for sid in range(n_sectors):
            m = 0
            for i in range(n):
                if sector_ids[i] == sid:
                    tmp[m] = alloc[i]
                    m += 1
            sector_total = _pairwise(tmp, 0, m)
            if sector_total > max_sector + 1e-12:
                f = max_sector / sector_total
                for i in range(n):
                    if sector_ids[i] == sid:
                        x[i] *= f
                cnt[C_SECTOR] += 1
        for i in range(n):
            alloc[i] = abs(x[i]) / mk[t, M_SCALE, i]
        total = _pairwise(alloc, 0, n)
    max_corr = par[P_MAX_CORR]
    if par[P_USE_CORR] != 0.0 and total > max_corr:
        for i in range(n):
            si = np.sign(x[i])
            acc = 0.0
            for j in range(n):
                acc += _npmax(corr[t, i, j] * (si * np.sign(x[j])), 0.0) * alloc[j]
            tmp[i] = acc
        for i in range(n):
            if tmp[i] > max_corr + 1e-12:
                x[i] *= max_corr / tmp[i]
                cnt[C_CORR] += 1
    v = 0.0
    for j in range(n):
        acc = 0.0
        for i in range(n):
            acc += x[i] * cov[t, i, j]
        v += acc * x[j]
    var_after = par[P_Z] * (v**0.5) if v > 0 else 0.0
    max_var = par[P_MAX_VAR]
    if var_after > max_var:
        f = max_var / var_after
        for i in range(n):
            x[i] *= f
        var_after = max_var
        cnt[C_VAR] += 1

    # ---- execution at the next open (only instruments whose target changed, on real bars)
    band = par[P_BAND]
    n_changed = 0
    for i in range(n):
        if _trades(x[i], target[i], band * mk[t, M_SCALE, i]) and mk[t1, M_REAL, i] != 0.0:
            n_changed += 1
    cost = 0.0
    if n_changed:
        eq_open = cash
        acc = 0.0
        for i in range(n):
            acc += units[i] * mk[t1, 0, i]
        eq_open = cash + acc
        cap = eq_open if eq_open > 0.0 else 0.0
        traded = 0.0
        cash_flow = 0.0
        for i in range(n):
            opn = mk[t1, 0, i]
            trade = _trades(x[i], target[i], band * mk[t, M_SCALE, i]) and mk[t1, M_REAL, i] != 0.0
            new_units[i] = x[i] * (cap / opn) if trade else units[i]
            delta = new_units[i] - units[i]
            traded += abs(delta) * opn
            cash_flow += delta * opn
            if executed:
                flow[i] += delta * opn
                tcost[i] += abs(delta) * opn * rate
        cost = traded * rate
        cash -= cash_flow + cost
        for i in range(n):
            opn = mk[t1, 0, i]
            u, nu = units[i], new_units[i]
            if u * nu > 0.0:
                if abs(nu) > abs(u):
                    entry[i] = (u * entry[i] + (nu - u) * opn) / nu
            else:
                entry[i] = opn if nu != 0.0 else 0.0
                bars[i] = bars[i] * 0.0
            units[i] = nu
            if mk[t1, M_REAL, i] != 0.0 and _trades(x[i], target[i], band * mk[t, M_SCALE, i]):
                target[i] = x[i]

    # ---- borrow cost of the shorts held from this open
    borrow = 0.0
    if par[P_BORROW] != 0.0:
        n_short = 0
        acc = 0.0
        for i in range(n):
            short = units[i] if units[i] < 0.0 else 0.0
            if units[i] < 0.0:
                n_short += 1
            acc += short * mk[t1, 0, i]
            if executed:
                flow[i] -= short * mk[t1, 0, i] * par[P_BORROW]
        if n_short:
            borrow = -acc * par[P_BORROW]
            cash -= borrow
            sc[S_BORROWS] += borrow
    sc[S_BORROW] = borrow

    # ---- stop-loss within the bar: low / high reach the level; fill at it or the gap open
    stop = par[P_STOP]
    if stop > 0:
        n_hit = 0
        sl_traded = 0.0
        sl_value = 0.0
        for i in range(n):
            u = units[i]
            if u == 0.0 or mk[t1, M_REAL, i] == 0.0:
                continue
            opn = mk[t1, 0, i]
            if u > 0.0:
                level = entry[i] * (1.0 - stop)
                hit = mk[t1, M_LOW, i] <= level
                px = level if level <= opn else opn
            else:
                level = entry[i] * (1.0 + stop)
                hit = mk[t1, M_HIGH, i] >= level
                px = level if level >= opn else opn
            if hit:
                n_hit += 1
                sl_traded += abs(u) * px
                sl_value += u * px
                if executed:
                    flow[i] -= u * px
                    tcost[i] += abs(u) * px * rate
                units[i] = 0.0
                entry[i] = 0.0
                bars[i] = 0.0
                target[i] = 0.0
        if n_hit:
            sl_cost = sl_traded * rate
            cash += sl_value - sl_cost
            cost += sl_cost
            cnt[C_STOP] += n_hit
    for i in range(n):
        if units[i] != 0.0:
            bars[i] += 1.0
        tmp[i] = units[i] * mk[t1, 1, i]
    equity = cash + _pairwise(tmp, 0, n)
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

    # ---- history row (before the values in tmp are overwritten)
    row = steps + 1
    hist[row, 0] = equity
    hist[row, 1] = cost
    hist[row, 2] = var_after
    for i in range(n + 1):
        hist[row, 3 + i] = weights[i]
    for i in range(n):
        hist[row, 4 + n + i] = tmp[i] / equity if equity > 0 else 0.0

    # ---- specialist rewards: the executed position's P&L in risk units (env.specialist_reward)
    # or the proposal's rolling Sharpe; costs amortised through the debts (cost_amortization)
    last = equity <= 0.0 or t1 >= par[P_END]
    amortize = par[P_AMORTIZE]
    debt = state[R_DEBT]
    if executed:
        for i in range(n):
            denom = eq_prev * mk[t, M_SCALE, i] * mk[t, 4, i]
            if eq_prev > 0:
                pnl = units[i] * mk[t1, 1, i] - value0[i] - flow[i] - tcost[i]
                r = pnl / denom
                if amortize > 1.0:
                    charged = tcost[i] / denom
                    debt[i] += charged
                    pay = debt[i] if last else debt[i] / amortize
                    debt[i] -= pay
                    r += charged - pay
                sc[N_SC + i] = r
            else:
                sc[N_SC + i] = 0.0
    else:
        _rolling_sharpe_rewards(t, mk, rate, prop, prev_prop, sc, cnt, rs, debt, amortize, last)

    # ---- diversification term of the meta reward: bonus x (1 - Herfindahl) x mean vol at t
    div_term = 0.0
    if par[P_META] != 0.0 and par[P_DIV_BONUS] != 0.0:
        for i in range(n):
            tmp[i] = abs(target[i])
        w_tot = _pairwise(tmp, 0, n)
        div = 0.0
        if w_tot > 1e-12 and math.isfinite(w_tot):
            dot = 0.0
            for i in range(n):
                dot += tmp[i] * tmp[i]
            h = dot / (w_tot * w_tot)
            div = 0.0 if h == 0.0 else 1.0 - h
        div_term = par[P_DIV_BONUS] * div * mk[t, 5, 0]
    sc[S_DIV] = div_term

    _observe(t1, mk, feat_rows, ann_vol, corr_ut, par, state, prop, weights, sc, window,
             out_spec, out_meta)  # fmt: skip


_F8_1 = "float64[::1]"
_OBS_ARGS = (
    "int64, float64[:, :, ::1], float32[:, ::1], float32[:, ::1], float32[:, ::1], "
    "float64[::1], float64[:, ::1], float64[::1], float64[::1], float64[::1], int64, "
    "float32[:, ::1], float32[::1]"
)
_RS_SIG = (
    "void(int64, float64[:, :, ::1], float64, float64[::1], float64[::1], float64[::1], "
    "int64[::1], float64[:, ::1], float64[::1], float64, boolean)"
)
_STEP_SIG = (
    "void(int64, int64, float64[:, :, ::1], float64[:, :, ::1], float64[:, :, ::1], "
    "float32[:, ::1], float32[:, ::1], float32[:, ::1], int64[::1], float64[::1], "
    "float64[:, ::1], float64[::1], float64[::1], float64[::1], float64[::1], int64[::1], "
    "float64[:, ::1], float64[:, ::1], int64, float32[:, ::1], float32[::1])"
)


def _compile():
    """Jit the kernels (eagerly, cached on disk when a cache dir is writable); None if no numba."""
    if os.environ.get("RL_TRADING_NUMBA", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        import numba
    except ImportError:
        return None

    def jit(fn, sig=None, inline=False):
        opts = {"inline": "always"} if inline else {}
        try:
            dec = numba.njit(sig, cache=True, **opts) if sig else numba.njit(cache=True, **opts)
            return dec(fn)
        except (RuntimeError, OSError):  # no writable cache location: compile without caching
            return numba.njit(sig, **opts)(fn) if sig else numba.njit(**opts)(fn)

    global _pairwise, _npmax, _trades, _observe, _rolling_sharpe_rewards, _step
    _pairwise = jit(_pairwise, "float64(float64[::1], int64, int64)")
    _npmax = jit(_npmax, "float64(float64, float64)")
    _trades = jit(_trades, "boolean(float64, float64, float64)", inline=True)
    _observe = jit(_observe, "void(" + _OBS_ARGS + ")")
    _rolling_sharpe_rewards = jit(_rolling_sharpe_rewards, _RS_SIG)
    _step = jit(_step, _STEP_SIG)
    return _observe, _step


try:
    _compiled = _compile()
except Exception:  # pragma: no cover - a broken numba install must not break the env
    _compiled = None

AVAILABLE = _compiled is not None
observe = _compiled[0] if AVAILABLE else None
step = _compiled[1] if AVAILABLE else None
