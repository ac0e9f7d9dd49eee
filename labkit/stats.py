"""The report's statistics: best, worst, mean, std and the t interval of the mean over runs, as rows and as
text; paired comparisons of two protocols (paired t over runs, McNemar's exact test over test images)."""
from __future__ import annotations

import math

import numpy as np

SPLITS = (("train", "Training accuracy"), ("test", "Test accuracy"))
TABLE_HEADER = ["", "best", "worst", "mean", "std (n−1)", "95 % CI of mean"]
REPORT_RUNS = 10  # the report's table summarises ten runs; its interval is derived from its mean, std and this n

_EPS = 1e-15  # relative step at which the continued fraction and the root search stop
_MAXIT = 100_000  # terms needed grow like sqrt(a + b); past df ≈ 1e6 rounding over them, not this cap, costs digits


# ----------------------------------------------------------------------------- distributions

def _stirling_corr(x: float) -> float:
    """lgamma(x) − [(x − ½)·log x − x + ½·log 2π] by its asymptotic series (error < 1e-14 for x ≥ 10)."""
    x2 = x * x
    return (1 / 12 - (1 / 360 - (1 / 1260 - (1 / 1680 - 1 / (1188 * x2)) / x2) / x2) / x2) / x


def _lgamma_shift(a: float, b: float) -> float:
    """lgamma(a + b) − lgamma(a), without the cancellation of two large lgammas when a ≥ 10."""
    if a < 10.0:
        return math.lgamma(a + b) - math.lgamma(a)
    return (a - 0.5) * math.log1p(b / a) + b * math.log(a + b) - b + _stirling_corr(a + b) - _stirling_corr(a)


def _lbeta(a: float, b: float) -> float:
    """log B(a, b)."""
    small, big = min(a, b), max(a, b)
    if small >= 10.0:
        return (0.5 * math.log(2 * math.pi) + (small - 0.5) * math.log(small) - _lgamma_shift(big, small)
                - small + _stirling_corr(small))
    return math.lgamma(small) - _lgamma_shift(big, small)


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz, as in Numerical Recipes)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, _MAXIT + 1):
        for aa in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                   -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta: continued fraction did not converge for a={a}, b={b}, x={x}")


def betainc_pair(a: float, b: float, x: float, y: float, log_x: float | None = None,
                 log_y: float | None = None) -> tuple[float, float]:
    """(I_x(a, b), 1 − I_x(a, b)), each to full relative precision; y = 1 − x and the logs given unrounded."""
    lx = math.log(x) if log_x is None else log_x
    ly = math.log(y) if log_y is None else log_y
    if lx == -math.inf:
        return 0.0, 1.0
    if ly == -math.inf:
        return 1.0, 0.0
    front = math.exp(a * lx + b * ly - _lbeta(a, b))
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side; the other side by symmetry
        i = front * _betacf(a, b, x) / a
        return i, 1.0 - i
    j = front * _betacf(b, a, y) / b
    return 1.0 - j, j


def _t_tails(t: float, df: float) -> tuple[float, float]:
    """(P[T > t], P[0 < T < t]) of Student's t with df degrees of freedom, for t ≥ 0."""
    if t == 0.0:
        return 0.5, 0.0
    # x = df / (df + t²) and y = 1 − x with their logs, none by subtraction; large t via df / t / t, not t²
    if t * t <= df:
        u = t * t / df
        x, y, lx, ly = 1.0 / (1.0 + u), u / (1.0 + u), -math.log1p(u), math.log(u) - math.log1p(u)
    else:
        r2 = df / t / t
        x, y = r2 / (1.0 + r2), 1.0 / (1.0 + r2)
        lx, ly = math.log(df) - 2.0 * math.log(t) - math.log1p(r2), -math.log1p(r2)
    i, j = betainc_pair(df / 2.0, 0.5, x, y, lx, ly)
    return 0.5 * i, 0.5 * j


def t_logpdf(t: float, df: float) -> float:
    """The log density of Student's t with df degrees of freedom."""
    lu = 2.0 * math.log(abs(t)) - math.log(df) if t else -math.inf  # log(t² / df), finite for any finite t ≠ 0
    log1p_u = math.log1p(math.exp(lu)) if lu < 30 else lu + math.log1p(math.exp(-lu))
    return _lgamma_shift(df / 2, 0.5) - 0.5 * math.log(df * math.pi) - (df + 1) / 2 * log1p_u


def _check_df(df: float) -> None:
    """Refuse degrees of freedom that are not positive numbers."""
    if not df > 0 or math.isinf(df):
        raise ValueError(f"degrees of freedom must be a positive finite number, got {df!r}")


def t_sf(t: float, df: float) -> float:
    """P[T > t] for Student's t with df degrees of freedom."""
    _check_df(df)
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    sf, center = _t_tails(abs(t), df)
    return sf if t >= 0 else 0.5 + center


def t_cdf(t: float, df: float) -> float:
    """P[T ≤ t] for Student's t with df degrees of freedom."""
    return t_sf(-t, df)


def t_two_sided_p(t: float, df: float) -> float:
    """P[|T| ≥ |t|]: the two-sided p-value of a t statistic."""
    _check_df(df)
    if math.isnan(t):
        return math.nan
    return 0.0 if math.isinf(t) else 2.0 * _t_tails(abs(t), df)[0]


def _norm_tails(z: float) -> tuple[float, float]:
    """(P[Z > z], P[0 < Z < z]) of the standard normal, for z ≥ 0."""
    return 0.5 * math.erfc(z / math.sqrt(2.0)), 0.5 * math.erf(z / math.sqrt(2.0))


def _norm_logpdf(z: float) -> float:
    """The standard normal log density."""
    return -0.5 * z * z - 0.5 * math.log(2.0 * math.pi)


def _quantile(p: float, tails, logpdf) -> float:
    """The p-quantile of a distribution symmetric about 0, from its tails (upper, central) on t ≥ 0 and its
    log density: safeguarded Newton, on the central mass near the median and on the log tail beyond."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability must lie in [0, 1], got {p!r}")
    if p in (0.0, 1.0):
        return math.copysign(math.inf, p - 0.5)
    if p == 0.5:
        return 0.0
    c = abs(p - 0.5)  # exact for p in [0.25, 1]; near the median it keeps the relative precision of t
    q = min(p, 1.0 - p)  # exact: 1 − p is representable for p ≥ 0.5
    if c < 0.25:
        f = lambda t: (tails(t)[1] - c, math.exp(logpdf(t)))  # increasing in t
    else:
        def f(t):  # increasing in t; an underflowed tail lies beyond the root
            sf = tails(t)[0]
            return (math.log(q) - math.log(sf), math.exp(logpdf(t) - math.log(sf))) if sf > 0.0 else (math.inf, 0.0)
    lo, hi = 0.0, 1.0
    while f(hi)[0] < 0.0:
        lo, hi = hi, hi * 2.0
        if math.isinf(hi):
            return math.copysign(math.inf, p - 0.5)
    t = hi
    for _ in range(400):
        v, dv = f(t)
        if v == 0.0:
            break
        if v < 0.0:
            lo = t
        else:
            hi = t
        step = t - v / dv if dv > 0.0 else math.nan
        new = step if lo < step < hi else (math.sqrt(lo * hi) if lo > 0.0 else hi / 2.0)
        if abs(new - t) <= _EPS * abs(t) or hi - lo <= _EPS * hi:
            t = new
            break
        t = new
    return math.copysign(t, p - 0.5)


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with df degrees of freedom (t_sf inverted)."""
    _check_df(df)
    return _quantile(p, lambda t: _t_tails(t, df), lambda t: t_logpdf(t, df))


def normal_quantile(p: float) -> float:
    """The p-quantile of the standard normal."""
    return _quantile(p, _norm_tails, _norm_logpdf)


def binom_half_cdf(k: int, n: int) -> float:
    """P[X ≤ k] for X ~ Bin(n, 1/2), exact (integer arithmetic, one rounding)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n


# ----------------------------------------------------------------------------- intervals and tests

def summary_interval(mean: float, std: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """The t interval of a mean from its sample mean, sample std (n−1) and n: mean ± t(n−1)·std/√n."""
    if n < 2 or math.isnan(std):
        return math.nan, math.nan
    half = t_quantile(0.5 + level / 2.0, n - 1) * std / math.sqrt(n)
    return float(mean - half), float(mean + half)


def mean_interval(values, level: float = 0.95) -> tuple[float, float]:
    """The t interval (n − 1 degrees of freedom) of the mean of values; nan for fewer than two."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return math.nan, math.nan
    return summary_interval(float(v.mean()), float(v.std(ddof=1)), len(v), level)


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n."""
    z = normal_quantile(0.5 + level / 2.0)
    p, z2 = k / n, z * z
    center, half = (p + z2 / (2 * n)) / (1 + z2 / n), z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def paired_proportion_interval(n11: int, n12: int, n21: int, n22: int, level: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval (Stat Med 1998;17:2635, method 10) of p1 − p2 = (n12 − n21)/n, paired."""
    n = n11 + n12 + n21 + n22
    r1, r2, c1, c2 = n11 + n12, n21 + n22, n11 + n21, n12 + n22
    p1, p2 = r1 / n, c1 / n
    l1, u1 = wilson_interval(r1, n, level)
    l2, u2 = wilson_interval(c1, n, level)
    phi = 0.0  # the correlation of p1 and p2, continuity-corrected as Newcombe does; 0 when a margin is empty
    if min(r1, r2, c1, c2) > 0:
        a = n11 * n22 - n12 * n21
        phi = ((a - n / 2) if a > n / 2 else 0.0 if a >= 0 else a) / math.sqrt(r1 * r2 * c1 * c2)
    d = p1 - p2
    lo = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    hi = d + math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return lo, hi


def mcnemar_exact(correct_a, correct_b) -> dict:
    """McNemar's exact test of two classifiers on the same images; B − A in error rate, its Newcombe interval."""
    a, b_ = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"mcnemar_exact: need two equal-length, non-empty 1-d arrays, "
                         f"got shapes {a.shape} and {b_.shape}")
    b, c = int((a & ~b_).sum()), int((~a & b_).sum())  # b: A right, B wrong; c: A wrong, B right
    n = len(a)
    # exact two-sided binomial p on the discordant pairs: X ~ Bin(b + c, 1/2) under "equally good"
    p = 1.0 if b + c == 0 else min(1.0, 2.0 * binom_half_cdf(min(b, c), b + c))
    both_wrong, both_right = int((~a & ~b_).sum()), int((a & b_).sum())
    lo, hi = paired_proportion_interval(both_wrong, b, c, both_right)  # p1 = B's error rate, p2 = A's
    return {"test": "McNemar exact (two-sided binomial on discordant pairs)", "b": b, "c": c, "n": n, "p": p,
            "error_a": float(1 - a.mean()), "error_b": float(1 - b_.mean()),
            "error_diff": (b - c) / n, "error_diff_ci95": [lo, hi], "interval": "Newcombe (1998) hybrid score"}


def paired_runs(acc_a, acc_b) -> dict:
    """Paired t-test of two protocols' per-run values over the same seeds: mean of B − A, its t interval, p, n."""
    a, b = np.asarray(acc_a, dtype=float), np.asarray(acc_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_runs: need two equal-length 1-d arrays, got shapes {a.shape} and {b.shape}")
    d, n = b - a, len(a)
    mean = float(d.mean()) if n else math.nan
    if n < 2:
        t = p = math.nan
    else:
        se = float(d.std(ddof=1)) / math.sqrt(n)
        if se > 0:
            t = mean / se
            p = t_two_sided_p(t, n - 1)
        else:  # every difference the same: no spread to test against
            t, p = (math.copysign(math.inf, mean), 0.0) if mean != 0 else (math.nan, math.nan)
    return {"test": "paired t (n − 1 degrees of freedom)", "mean_diff": mean, "ci95": list(mean_interval(d)),
            "t": t, "p": p, "n": n, "df": n - 1}


def _fmt_p(p: float) -> str:
    """A p-value in two significant digits, exponents without leading zeros."""
    return f"{p:.2g}".replace("e-0", "e-").replace("e+0", "e+")


def compare_protocols(probs_a, probs_b, y, names: tuple[str, str] = ("A", "B")) -> dict:
    """Two protocols' test-set probabilities (runs, N, 10), same seeds in the same order: paired t over runs,
    McNemar on the ensembles' and on run 1's predictions, and a one-line summary."""
    pa, pb, y = np.asarray(probs_a), np.asarray(probs_b), np.asarray(y)
    if pa.ndim != 3 or pa.shape != pb.shape or pa.shape[1] != len(y):
        raise ValueError(f"compare_protocols: need probabilities of the same shape (runs, {len(y)}, classes), "
                         f"got {pa.shape} and {pb.shape}")
    # runs: how much B beats A across training randomness; McNemar: whether the test images tell two fixed
    # classifiers apart (it ignores run-to-run spread, so it complements the paired t rather than replacing it)
    runs = paired_runs((pa.argmax(-1) == y).mean(1), (pb.argmax(-1) == y).mean(1))
    ens = mcnemar_exact(pa.mean(0).argmax(-1) == y, pb.mean(0).argmax(-1) == y)
    first = mcnemar_exact(pa[0].argmax(-1) == y, pb[0].argmax(-1) == y)
    lo, hi = runs["ci95"]
    text = (f"{names[1]} − {names[0]}: {100 * runs['mean_diff']:+.2f} points "
            f"(95 % CI {100 * lo:+.2f}..{100 * hi:+.2f}), paired t p = {_fmt_p(runs['p'])}; "
            f"McNemar on ensembles: b={ens['b']}, c={ens['c']}, p={_fmt_p(ens['p'])}")
    return {"runs": runs, "mcnemar_ensemble": ens, "mcnemar_run1": first, "text": text}


# ----------------------------------------------------------------------------- the report's table

def accuracy_stats(values) -> dict:
    """best, worst, mean, sample standard deviation (n-1) and the 95 % t interval of the mean of accuracies."""
    v = np.asarray(values, dtype=float)
    return {"best": float(v.max()), "worst": float(v.min()), "mean": float(v.mean()),
            "std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"), "n": len(v),
            "ci95": list(mean_interval(v))}


def summarize(metrics: dict) -> dict:
    """The report's table from final epochs: {"train": stats, "test": stats}."""
    finals = [r["epochs"][-1] for r in metrics["runs"] if r["epochs"]]
    return {split: accuracy_stats([f[f"{split}_acc"] for f in finals]) for split in ("train", "test")}


def format_interval(lo: float, hi: float, digits: int = 5) -> str:
    """An interval as 'lo..hi'; empty when undefined."""
    return "" if math.isnan(lo) or math.isnan(hi) else f"{lo:.{digits}f}..{hi:.{digits}f}"


def table_rows(metrics: dict, label: str, report: dict | None = None) -> list[list]:
    """[name, best, worst, mean, std, 95 % CI of mean] rows of the report's table, the report's own rows beside."""
    stats = summarize(metrics)
    rows = []
    for split, name in SPLITS:
        s = stats[split]
        rows.append([f"{name} — {label}", s["best"], s["worst"], s["mean"], s["std"], format_interval(*s["ci95"])])
        if report:
            r = report[split]
            ci = summary_interval(r["mean"], r["std"], REPORT_RUNS)  # the report gives no per-run numbers
            rows.append([f"{name} — the report", r["best"], r["worst"], r["mean"], r["std"], format_interval(*ci)])
    return rows


def format_table(metrics: dict, report: dict | None = None) -> str:
    """Per-run final numbers, then best/worst/mean/std/interval rows (with the report's beside them), as text."""
    lines = [f"{'seed':>6} {'train acc':>10} {'test acc':>10} {'s/epoch':>8}"]
    for r in metrics["runs"]:
        if r["epochs"]:
            f = r["epochs"][-1]
            sec = np.median([e["seconds"] for e in r["epochs"]])
            lines.append(f"{r['seed']:>6} {f['train_acc']:>10.4f} {f['test_acc']:>10.4f} {sec:>8.2f}")
    lines += ["", f"{'':<34} {'best':>8} {'worst':>8} {'mean':>9} {'std (n-1)':>10} {'95 % CI of mean':>16}"]
    for name, best, worst, mean, std, ci in table_rows(metrics, metrics["config"]["model"], report):
        lines.append(f"{name:<34} {best:>8.4f} {worst:>8.4f} {mean:>9.5f} {std:>10.6f} {ci:>16}")
    return "\n".join(lines)


def per_digit_accuracy(probs, y) -> np.ndarray:
    """(runs, 10): the accuracy of each run on the test images of each digit; probs (runs, N, 10), y (N,)."""
    pred, y = np.asarray(probs).argmax(-1), np.asarray(y)
    return np.stack([(pred[:, y == d] == d).mean(1) for d in range(10)], 1)
