"""labkit.stats: the report's table, the t distribution, intervals and paired tests, against scipy.stats and by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as ss

from labkit import stats as S
from labkit.recipes import REPORT_TABLE
from labkit.stats import TABLE_HEADER, accuracy_stats, format_table, summarize, table_rows

DFS = [1, 2, 3, 4, 5, 7, 10, 30, 100, 1000, 10000, 1.5, 12.25]


def fake_metrics(test_accs, train_accs=None, model="baseline"):
    train_accs = train_accs or [a - 0.01 for a in test_accs]
    return {"config": {"model": model},
            "runs": [{"seed": i + 1, "epochs": [{"train_acc": 0.5, "test_acc": 0.5, "seconds": 9.0},
                                                {"train_acc": tr, "test_acc": te, "seconds": 1.0 + i}]}
                     for i, (tr, te) in enumerate(zip(train_accs, test_accs))]}


# ----------------------------------------------------------------------------- the t distribution

@pytest.mark.parametrize("df", DFS)
def test_t_sf_cdf_and_two_sided_p_against_scipy(df):
    rng = np.random.default_rng(int(df * 4))
    ts = [0.0, 1e-3, 0.5, 1.0, 2.0, 4.0, 10.0, 60.0, 1e3, 1e6, *rng.standard_normal(30) * 3, *-rng.exponential(5, 10)]
    for t in ts:
        assert S.t_sf(t, df) == pytest.approx(ss.t.sf(t, df), rel=1e-10, abs=1e-300), t
        assert S.t_cdf(t, df) == pytest.approx(ss.t.cdf(t, df), rel=1e-10, abs=1e-300), t
        assert S.t_two_sided_p(t, df) == pytest.approx(2 * ss.t.sf(abs(t), df), rel=1e-10, abs=1e-300), t
        assert math.exp(S.t_logpdf(t, df)) == pytest.approx(ss.t.pdf(t, df), rel=1e-10, abs=1e-300), t


def test_t_sf_closed_forms_for_one_and_two_degrees_of_freedom():
    for t in [1e-12, 1e-8, 1e-4, 0.3, 1.0, 3.0, 1e5, 1e150]:
        assert S.t_sf(t, 1) == pytest.approx(math.atan(1 / t) / math.pi, rel=1e-13)  # Cauchy
        s = math.sqrt(2 + t * t) if t < 1e100 else t
        assert S.t_sf(t, 2) == pytest.approx(1 / (s * (s + t)), rel=1e-13)  # 1/2 − t/(2√(2+t²)), rearranged
    assert (S.t_sf(math.inf, 3), S.t_sf(-math.inf, 3), S.t_two_sided_p(math.inf, 3)) == (0.0, 1.0, 0.0)
    assert math.isnan(S.t_sf(math.nan, 3)) and S.t_sf(0.0, 7) == 0.5


def test_t_quantile_against_scipy_over_many_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(1500):
        df = float(rng.integers(1, 10_001)) if rng.random() < 0.5 else float(rng.uniform(1, 60))
        p = float(rng.random() ** 4) if rng.random() < 0.5 else float(1 - rng.random() ** 4)
        assert S.t_quantile(p, df) == pytest.approx(ss.t.ppf(p, df), rel=1e-10), (p, df)


@pytest.mark.parametrize("df", DFS)
def test_t_quantile_at_the_edges(df):
    ps = [1e-300, 1e-100, 1e-15, 1e-10, 1e-6, 0.025, 0.25, 0.3, 0.49, 0.5 + 1e-6, 0.75, 0.975, 1 - 1e-10, 1 - 1e-15]
    for p in ps:
        t = S.t_quantile(p, df)
        # scipy's ppf gives +inf at p = 1e-300 and loses digits just off the median at df = 4 (mpmath agrees with t)
        if 1e-100 <= p and abs(p - 0.5) > 1e-3:
            assert t == pytest.approx(ss.t.ppf(p, df), rel=1e-10), p
        assert S.t_cdf(t, df) == pytest.approx(p, rel=1e-12), p  # the inverse of the cdf
        assert S._t_tails(abs(t), df)[1] == pytest.approx(abs(p - 0.5), rel=1e-12), p  # central mass, unrounded
        if 1 - (1 - p) == p:  # symmetry, where 1 − p is exact
            assert S.t_quantile(1 - p, df) == pytest.approx(-t, rel=1e-12), p
    assert (S.t_quantile(0.5, df), S.t_quantile(0.0, df), S.t_quantile(1.0, df)) == (0.0, -math.inf, math.inf)


def test_t_quantile_closed_forms_for_one_and_two_degrees_of_freedom():
    for p in [1e-300, 1e-100, 1e-10, 0.025, 0.3, 0.5 - 1e-9, 0.5 + 1e-12, 0.5 + 1e-6, 0.75, 0.975, 1 - 1e-12]:
        cauchy = (-1 / math.tan(math.pi * p) if p < 0.25 else 1 / math.tan(math.pi * (1 - p)) if p > 0.75
                  else math.tan(math.pi * (p - 0.5)))
        assert S.t_quantile(p, 1) == pytest.approx(cauchy, rel=1e-12), p
        assert S.t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-12), p
    assert S.t_quantile(0.975, 1) == pytest.approx(12.706204736174698, rel=1e-12)  # the tables' t(0.975, 1)


def test_normal_quantile_and_binomial_against_scipy():
    for p in [1e-300, 1e-20, 1e-6, 0.025, 0.3, 0.5 + 1e-12, 0.8, 0.975, 1 - 1e-12]:
        assert S.normal_quantile(p) == pytest.approx(ss.norm.ppf(p), rel=1e-12), p
    for n in [1, 2, 7, 30, 200, 1500]:
        for k in [-1, 0, 1, n // 3, n // 2, n - 1, n]:
            assert S.binom_half_cdf(k, n) == pytest.approx(ss.binom.cdf(k, n, 0.5), rel=1e-12, abs=1e-300), (k, n)


@pytest.mark.parametrize("call", [lambda: S.t_quantile(1.2, 5), lambda: S.t_quantile(-0.1, 5), lambda: S.t_sf(1.0, 0),
                                  lambda: S.t_quantile(0.5, -1), lambda: S.t_sf(1.0, math.nan)])
def test_bad_arguments_are_refused(call):
    with pytest.raises(ValueError, match="must"):
        call()


# ----------------------------------------------------------------------------- intervals

def test_mean_interval_against_scipy():
    rng = np.random.default_rng(1)
    for n in [2, 3, 5, 10, 40, 2000]:
        for level in (0.95, 0.99, 0.5):
            v = 0.9 + 0.01 * rng.standard_normal(n)
            lo, hi = ss.t.interval(level, n - 1, loc=v.mean(), scale=ss.sem(v))
            assert S.mean_interval(v, level) == pytest.approx((lo, hi), rel=1e-12), (n, level)
    assert all(math.isnan(x) for x in S.mean_interval([0.9]) + S.mean_interval([]))


def test_mean_interval_by_hand():
    lo, hi = S.mean_interval([0.90, 0.92, 0.94])  # mean 0.92, s = 0.02, t(0.975, 2) = 4.30265
    assert (lo, hi) == pytest.approx((0.92 - 4.302652729749464 * 0.02 / math.sqrt(3),
                                      0.92 + 4.302652729749464 * 0.02 / math.sqrt(3)), rel=1e-12)
    assert S.mean_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)


def test_wilson_interval_against_scipy():
    for k, n in [(0, 10), (3, 10), (10, 10), (1, 1), (57, 10_000), (5000, 10_000)]:
        ci = ss.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert S.wilson_interval(k, n) == pytest.approx((ci.low, ci.high), rel=1e-12, abs=1e-15), (k, n)


def test_paired_proportion_interval_textbook_case():
    # Cavo et al. (2012) as worked in Fagerland, Lydersen & Laake, "Statistical analysis of contingency tables",
    # ch. 8: table [[59, 6], [16, 80]], Newcombe square-and-add, estimate −0.0621, 95 % CI −0.1186 to −0.0046
    lo, hi = S.paired_proportion_interval(59, 6, 16, 80)
    assert (round(lo, 4), round(hi, 4)) == (-0.1186, -0.0046)


# ----------------------------------------------------------------------------- McNemar and paired t

def _pairs(both_right, b, c, both_wrong):
    """Boolean correctness arrays with the given 2×2 counts (b: A right, B wrong; c: A wrong, B right)."""
    a = [True] * both_right + [True] * b + [False] * c + [False] * both_wrong
    bb = [True] * both_right + [False] * b + [True] * c + [False] * both_wrong
    return np.array(a), np.array(bb)


def test_mcnemar_exact_by_hand():
    r = S.mcnemar_exact(*_pairs(80, 5, 0, 15))
    assert (r["b"], r["c"], r["n"]) == (5, 0, 100) and r["p"] == pytest.approx(2 / 32)  # 2 · (1/2)^5
    assert r["error_diff"] == pytest.approx(0.05) and (r["error_a"], r["error_b"]) == pytest.approx((0.15, 0.20))
    assert S.mcnemar_exact(*_pairs(50, 10, 2, 8))["p"] == pytest.approx(2 * (1 + 12 + 66) / 4096)  # Bin(12, ½) ≤ 2
    assert S.mcnemar_exact(*_pairs(50, 1, 0, 8))["p"] == 1.0  # 2 · ½, capped
    assert S.mcnemar_exact(*_pairs(50, 4, 4, 8))["p"] == 1.0  # a tie
    none = S.mcnemar_exact(*_pairs(90, 0, 0, 10))  # b + c = 0: no evidence either way
    lo, hi = none["error_diff_ci95"]
    assert none["p"] == 1.0 and none["error_diff"] == 0.0 and lo < 0 < hi


def test_mcnemar_exact_against_scipy_binomtest():
    rng = np.random.default_rng(2)
    for _ in range(300):
        n = int(rng.integers(1, 3000))
        a, b = rng.random(n) < rng.uniform(0.5, 1), rng.random(n) < rng.uniform(0.5, 1)
        r = S.mcnemar_exact(a, b)
        disc = r["b"] + r["c"]
        want = 1.0 if disc == 0 else ss.binomtest(r["b"], disc, 0.5).pvalue
        assert r["p"] == pytest.approx(want, rel=1e-9, abs=1e-300)
        assert r["error_diff"] == pytest.approx((1 - b.mean()) - (1 - a.mean()), abs=1e-12)
        lo, hi = r["error_diff_ci95"]
        assert lo <= r["error_diff"] <= hi
        swapped = S.mcnemar_exact(b, a)["error_diff_ci95"]  # B − A against A − B: the mirror interval
        assert swapped == pytest.approx([-hi, -lo], abs=1e-12)


def test_mcnemar_refuses_arrays_of_different_lengths():
    with pytest.raises(ValueError, match="equal-length"):
        S.mcnemar_exact([True, False], [True])


def test_paired_runs_against_scipy_ttest_rel():
    rng = np.random.default_rng(3)
    for n in [2, 3, 10, 50]:
        for _ in range(20):
            a = 0.98 + 0.002 * rng.standard_normal(n)
            b = a + rng.normal(0.001, 0.002, n)
            r = S.paired_runs(a, b)
            ref = ss.ttest_rel(b, a)
            assert (r["t"], r["p"], r["n"], r["df"]) == (pytest.approx(ref.statistic, rel=1e-10),
                                                          pytest.approx(ref.pvalue, rel=1e-9), n, n - 1)
            assert r["ci95"] == pytest.approx(list(ref.confidence_interval(0.95)), rel=1e-10)
            assert r["mean_diff"] == pytest.approx(np.mean(b - a), rel=1e-12)


def test_paired_runs_edge_cases():
    same = S.paired_runs([0.5, 0.25, 0.75], [0.5, 0.25, 0.75])
    assert math.isnan(same["t"]) and math.isnan(same["p"]) and same["mean_diff"] == 0.0
    shift = S.paired_runs([0.5, 0.25], [0.75, 0.5])  # every difference exactly +0.25: no spread
    assert (shift["t"], shift["p"], shift["ci95"]) == (math.inf, 0.0, [0.25, 0.25])
    one = S.paired_runs([0.5], [0.6])
    assert math.isnan(one["p"]) and all(math.isnan(x) for x in one["ci95"])
    with pytest.raises(ValueError, match="equal-length"):
        S.paired_runs([0.5, 0.6], [0.5])


def _probs(pred, classes=10):
    """(runs, N, classes) one-hot-ish probabilities whose argmax is pred (runs, N)."""
    p = np.full((*pred.shape, classes), 0.01)
    np.put_along_axis(p, pred[..., None], 1 - 0.01 * (classes - 1), axis=-1)
    return p


def test_compare_protocols_pairs_runs_and_ensembles():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 10, 400)
    noisy = lambda rate: np.where(rng.random((5, 400)) < rate, (y + 1) % 10, y)
    pa, pb = _probs(noisy(0.2)), _probs(noisy(0.1))
    r = S.compare_protocols(pa, pb, y, names=("base", "new"))
    acc_a, acc_b = (pa.argmax(-1) == y).mean(1), (pb.argmax(-1) == y).mean(1)
    ref = ss.ttest_rel(acc_b, acc_a)
    assert r["runs"]["p"] == pytest.approx(ref.pvalue, rel=1e-9) and r["runs"]["n"] == 5
    ens_a, ens_b = pa.mean(0).argmax(-1) == y, pb.mean(0).argmax(-1) == y
    ens = r["mcnemar_ensemble"]
    assert (ens["b"], ens["c"]) == (int((ens_a & ~ens_b).sum()), int((~ens_a & ens_b).sum()))
    first_a, first_b = pa[0].argmax(-1) == y, pb[0].argmax(-1) == y
    assert r["mcnemar_run1"]["c"] == int((~first_a & first_b).sum())
    d, (lo, hi) = r["runs"]["mean_diff"], r["runs"]["ci95"]
    assert d == pytest.approx(np.mean(acc_b - acc_a)) and lo < d < hi and d > 0.05  # 10 points fewer errors
    assert r["text"].startswith(f"new − base: +{100 * d:.2f} points (95 % CI +{100 * lo:.2f}..+{100 * hi:.2f}), ")
    assert f"McNemar on ensembles: b={ens['b']}, c={ens['c']}, p=" in r["text"]


def test_compare_protocols_text_by_hand():
    y = np.array([0, 1, 2, 3])
    pa = _probs(np.array([[0, 1, 9, 9], [0, 9, 9, 9]]))  # accuracies 0.5, 0.25
    pb = _probs(np.array([[0, 1, 2, 9], [0, 1, 2, 3]]))  # 0.75, 1.0: differences +0.25, +0.75
    # ensembles (ties go to the lower class): A right on images 0 and 1, B on all four, so b = 0, c = 2
    r = S.compare_protocols(pa, pb, y)
    # mean +0.5, s = 0.35355, t(0.975, 1) = 12.7062: half-width 12.7062 · 0.35355 / √2 = 3.17655
    assert r["runs"]["ci95"] == pytest.approx([0.5 - 3.1765511840436744, 0.5 + 3.1765511840436744], rel=1e-12)
    assert r["runs"]["p"] == pytest.approx(1 - 2 * math.atan(2) / math.pi, rel=1e-12)  # t = 2, df 1
    assert r["text"] == ("B − A: +50.00 points (95 % CI -267.66..+367.66), paired t p = 0.3; "
                         "McNemar on ensembles: b=0, c=2, p=0.5")
    with pytest.raises(ValueError, match="same shape"):
        S.compare_protocols(pa, pb[:1], y)


# ----------------------------------------------------------------------------- the report's table

def test_accuracy_stats_by_hand():
    s = accuracy_stats([0.90, 0.92, 0.94])
    assert (s["best"], s["worst"], s["n"]) == (0.94, 0.90, 3)
    assert s["mean"] == pytest.approx(0.92) and s["std"] == pytest.approx(0.02)  # sample std: sqrt(0.0008 / 2)
    assert s["ci95"] == pytest.approx(list(ss.t.interval(0.95, 2, loc=0.92, scale=0.02 / math.sqrt(3))))
    one = accuracy_stats([0.9])
    assert math.isnan(one["std"]) and all(math.isnan(x) for x in one["ci95"])
    assert set(s) == {"best", "worst", "mean", "std", "n", "ci95"}


def test_summarize_uses_the_final_epoch_of_each_run():
    m = fake_metrics([0.97, 0.95, 0.96])
    s = summarize(m)
    assert (s["test"]["best"], s["test"]["worst"]) == (0.97, 0.95)
    assert s["test"]["std"] == pytest.approx(np.std([0.97, 0.95, 0.96], ddof=1))
    assert s["train"]["mean"] == pytest.approx(0.95)


def test_table_rows_with_and_without_the_report():
    m = fake_metrics([0.97, 0.95])
    rows = table_rows(m, "baseline", REPORT_TABLE)
    assert [r[0] for r in rows] == ["Training accuracy — baseline", "Training accuracy — the report",
                                    "Test accuracy — baseline", "Test accuracy — the report"]
    assert rows[3][1:5] == [REPORT_TABLE["test"][k] for k in ("best", "worst", "mean", "std")]
    assert len(table_rows(m, "improved")) == 2 and len(TABLE_HEADER) == len(rows[0]) == 6
    r = REPORT_TABLE["test"]  # the report's interval: from its mean and std over its ten runs
    lo, hi = ss.t.interval(0.95, 9, loc=r["mean"], scale=r["std"] / math.sqrt(10))
    assert rows[3][5] == f"{lo:.5f}..{hi:.5f}"
    lo, hi = ss.t.interval(0.95, 1, loc=0.96, scale=np.std([0.97, 0.95], ddof=1) / math.sqrt(2))
    assert rows[2][5] == f"{lo:.5f}..{hi:.5f}"
    assert table_rows(fake_metrics([0.97]), "one run")[1][5] == ""  # no interval from one run


def test_format_table_prints_runs_and_statistics():
    text = format_table(fake_metrics([0.97, 0.95]), REPORT_TABLE)
    lines = text.splitlines()
    assert lines[1].split() == ["1", "0.9600", "0.9700", "5.00"]  # seed, train, test, median s/epoch of (9, 1)
    ci = "{:.5f}..{:.5f}".format(*ss.t.interval(0.95, 1, loc=0.96, scale=0.01))  # s = 0.014142, s/√2 = 0.01
    assert any(line.startswith("Test accuracy — baseline")
               and line.split()[-5:] == ["0.9700", "0.9500", "0.96000", "0.014142", ci] for line in lines)
    assert "95 % CI of mean" in lines[4]
