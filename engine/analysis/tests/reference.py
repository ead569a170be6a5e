#!/usr/bin/env python3
"""Reference values from scipy for the judge's tests.

Prints JSON: Wilcoxon signed-rank cases (scipy.stats.wilcoxon, approx, zeros dropped) with
the median of Walsh averages (the one-sample Hodges-Lehmann estimate), Mann-Whitney U cases (scipy.stats.mannwhitneyu, asymptotic with continuity
correction for every data set and alternative, exact for small tie-free data sets) and Fisher
exact cases (scipy.stats.fisher_exact). The data sets are generated here by a fixed LCG so the
JSON carries everything the Rust test needs.

Regenerate the fixture with:  python3 engine/analysis/tests/reference.py > engine/analysis/tests/reference.json
"""
import json
import math

import scipy
from scipy.stats import fisher_exact, mannwhitneyu, wilcoxon


class Lcg:
    def __init__(self, seed):
        self.s = seed

    def next(self):
        self.s = (6364136223846793005 * self.s + 1442695040888963407) % (1 << 64)
        return (self.s >> 11) / float(1 << 53)


def ints(rng, n, lo, hi):
    """Integers in [lo, hi] — plenty of ties."""
    return [float(lo + int(rng.next() * (hi - lo + 1))) for _ in range(n)]


def reals(rng, n, scale, shift=0.0):
    """Distinct lognormal-ish reals, rounded to 6 decimals (exactly representable in JSON)."""
    out = []
    for _ in range(n):
        u = max(rng.next(), 1e-12)
        out.append(round(shift + scale * math.exp(2.0 * (u - 0.5)), 6))
    return out


def datasets():
    r = Lcg(2024)
    return [
        ("ties-small", ints(r, 12, 1, 5), ints(r, 15, 1, 5)),
        ("ties-unequal", ints(r, 40, 0, 9), ints(r, 7, 2, 11)),
        ("ties-heavy", ints(r, 200, 0, 3), ints(r, 150, 0, 3)),
        ("ties-shifted", ints(r, 300, 0, 20), ints(r, 320, 3, 24)),
        ("latency-like", reals(r, 500, 100.0), reals(r, 450, 110.0)),
        ("identical", [1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 4.0, 5.0]),
        ("all-equal", [7.0] * 6, [7.0] * 9),
        ("one-vs-many", [3.5], ints(r, 20, 0, 7)),
        ("exact-small", reals(r, 6, 10.0), reals(r, 8, 10.0, 0.7)),
        ("exact-medium", reals(r, 9, 10.0), reals(r, 12, 10.0, 1.3)),
        ("exact-separated", [1.0, 2.0, 3.0], [10.0, 11.0, 12.0, 13.0]),
    ]


def paired_datasets():
    """Paired differences (candidate - baseline): ties, zeros, shifts, log ratios."""
    r = Lcg(7)
    return [
        ("diff-ties-zeros", ints(r, 30, -3, 3)),
        ("diff-shifted", ints(r, 40, -2, 5)),
        ("diff-small", [0.4, -1.2, 2.5, 3.1, -0.3, 1.7]),
        ("diff-log-ratios", [round(math.log(a / b), 6) for a, b in zip(reals(r, 60, 10.0, 0.5), reals(r, 60, 10.0))]),
        ("diff-all-positive", [round(x, 6) for x in reals(r, 12, 1.0)]),
        ("diff-one-tie-group", [1.0, 1.0, 1.0, -1.0, 2.0, -2.0, 2.0, 3.0]),
    ]


def walsh_median(d):
    w = sorted((d[i] + d[j]) / 2.0 for i in range(len(d)) for j in range(i, len(d)))
    n = len(w)
    return w[n // 2] if n % 2 else 0.5 * (w[n // 2 - 1] + w[n // 2])


def main():
    cases = []
    for name, x, y in datasets():
        ties = len(set(x + y)) < len(x + y)
        methods = ["asymptotic"] + ([] if ties or len(x) + len(y) > 40 else ["exact"])
        for method in methods:
            for alt in ["two-sided", "less", "greater"]:
                res = mannwhitneyu(x, y, alternative=alt, method=method, use_continuity=True)
                cases.append({
                    "name": name,
                    "x": x,
                    "y": y,
                    "alternative": alt,
                    "method": method,
                    "statistic": float(res.statistic),
                    "pvalue": float(res.pvalue),
                })
    fisher = []
    for table in [[[8, 2], [1, 5]], [[0, 300], [9, 291]], [[5, 995], [50, 950]], [[3, 7], [3, 7]],
                  [[1, 99], [4, 96]], [[12, 488], [2, 498]]]:
        for alt in ["two-sided", "less", "greater"]:
            fisher.append({"table": table, "alternative": alt,
                           "pvalue": float(fisher_exact(table, alternative=alt).pvalue)})
    paired = []
    for name, d in paired_datasets():
        for alt in ["two-sided", "less", "greater"]:
            res = wilcoxon(d, alternative=alt, method="approx")
            paired.append({"name": name, "d": d, "alternative": alt,
                           "statistic": float(res.statistic), "pvalue": float(res.pvalue),
                           "walsh_median": walsh_median(d)})
    # one case per line keeps the checked-in fixture diffable
    lines = ['{"scipy": %s,' % json.dumps(scipy.__version__), ' "mannwhitneyu": [']
    lines.append(",\n".join("  " + json.dumps(c) for c in cases))
    lines.append(' ],')
    lines.append(' "fisher_exact": [')
    lines.append(",\n".join("  " + json.dumps(c) for c in fisher))
    lines.append(' ],')
    lines.append(' "wilcoxon": [')
    lines.append(",\n".join("  " + json.dumps(c) for c in paired))
    lines.append(' ]}')
    print("\n".join(lines))


if __name__ == "__main__":
    main()
