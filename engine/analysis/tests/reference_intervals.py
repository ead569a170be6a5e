#!/usr/bin/env python3
"""Reference values for the effect intervals of the canary report.

Prints JSON with two lists:
- "moses": the distribution-free interval for the Hodges–Lehmann shift (candidate − baseline):
  all pairwise differences sorted with numpy, the rank k = floor(nm/2 − z·sqrt(nm(n+m+1)/12))
  with z from scipy.stats.norm.ppf, and the interval [d_(k), d_(nm+1−k)] (1-based); null
  when an arm has fewer than 2 values or k < 1.
- "newcombe": Newcombe's hybrid score interval (method 10 of Newcombe 1998) for the rate
  difference candidate − baseline, built from scipy's own Wilson intervals
  (scipy.stats.binomtest(...).proportion_ci(method="wilson")); null when an arm has no trials.
  The script also checks itself against the values Newcombe (1998, Table II) publishes.

The data sets are generated here by a fixed LCG (the one in reference.py), so the JSON carries
everything the Rust test needs.

Regenerate the fixture with:
  python3 engine/analysis/tests/reference_intervals.py > engine/analysis/tests/reference_intervals.json
"""
import json
import math
import sys

import numpy as np
import scipy
from scipy.stats import binomtest, norm


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


def moses(b, c, level):
    n, m = len(b), len(c)
    if n < 2 or m < 2:
        return None
    z = norm.ppf(0.5 + level / 2.0)
    k = math.floor(n * m / 2.0 - z * math.sqrt(n * m * (n + m + 1) / 12.0))
    if k < 1:
        return None
    d = np.sort(np.subtract.outer(np.asarray(c), np.asarray(b)).ravel())
    return [float(d[k - 1]), float(d[n * m - k])]


def newcombe(eb, nb, ec, nc, level):
    if nb == 0 or nc == 0:
        return None
    ci = lambda k, n: binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    wb, wc = ci(eb, nb), ci(ec, nc)
    pb, pc = eb / nb, ec / nc
    d = pc - pb
    return [float(d - math.hypot(pc - wc.low, wb.high - pb)),
            float(d + math.hypot(wc.high - pc, pb - wb.low))]


def moses_datasets():
    r = Lcg(4242)
    return [
        # small n: the interval is two exact order statistics of a handful of differences
        ("small-5-6", reals(r, 5, 10.0), reals(r, 6, 10.0, 1.0)),
        ("small-4-4", reals(r, 4, 10.0), reals(r, 4, 10.0, 0.5)),
        ("small-2-9", reals(r, 2, 10.0), reals(r, 9, 10.0, 2.0)),
        ("small-3-3", [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]),
        ("one-value", [4.0], reals(r, 10, 10.0)),
        ("separated", [1.0, 2.0, 3.0, 4.0, 5.0], [10.0, 11.0, 12.0, 13.0, 14.0, 15.0]),
        # ties
        ("ties-small", ints(r, 12, 1, 5), ints(r, 15, 1, 5)),
        ("ties-heavy", ints(r, 200, 0, 3), ints(r, 150, 0, 3)),
        ("ties-shifted", ints(r, 300, 0, 20), ints(r, 320, 3, 24)),
        ("all-equal", [7.0] * 6, [7.0] * 9),
        # unequal sizes
        ("unequal-40-7", ints(r, 40, 0, 9), ints(r, 7, 2, 11)),
        ("unequal-7-60", reals(r, 7, 50.0), reals(r, 60, 50.0, -3.0)),
        # latency-like, larger (no thinning below 1000 per arm)
        ("latency-like", reals(r, 500, 100.0), reals(r, 450, 110.0)),
        ("latency-900", reals(r, 900, 20.0), reals(r, 1000, 20.0, 0.25)),
        # sizes where (k / nm) * nm rounds above k in floating point: the rank must stay k
        ("rank-rounding-995-72", reals(r, 995, 20.0), reals(r, 72, 20.0, 0.5)),
    ]


# (baseline events, baseline trials, candidate events, candidate trials)
NEWCOMBE_CASES = [
    (48, 80, 56, 70), (3, 10, 9, 10), (2, 7, 6, 7), (0, 29, 5, 56), (0, 20, 0, 10),
    (0, 10, 0, 10), (0, 20, 10, 10), (0, 10, 10, 10),
    (5, 995, 50, 950), (50, 1000, 5, 1000), (1, 1000, 0, 1000), (0, 1, 1, 1), (1, 1, 1, 1),
    (7, 7, 0, 3), (120, 40000, 150, 38000), (0, 0, 3, 10), (3, 10, 0, 0), (0, 0, 0, 0),
]

# Newcombe (1998), Table II, method 10, 95 %: candidate = the first proportion of each example.
NEWCOMBE_PUBLISHED = {
    (48, 80, 56, 70): (0.0524, 0.3339), (3, 10, 9, 10): (0.1705, 0.8090),
    (2, 7, 6, 7): (0.0582, 0.8062), (0, 29, 5, 56): (-0.0381, 0.1926),
    (0, 20, 0, 10): (-0.1611, 0.2775), (0, 10, 0, 10): (-0.2775, 0.2775),
    (0, 20, 10, 10): (0.6791, 1.0), (0, 10, 10, 10): (0.6075, 1.0),
}


def main():
    moses_cases = []
    for name, b, c in moses_datasets():
        for level in [0.9, 0.95, 0.98]:
            moses_cases.append({"name": name, "baseline": b, "candidate": c, "level": level,
                                "interval": moses(b, c, level)})
    newcombe_cases = []
    for case in NEWCOMBE_CASES:
        for level in [0.9, 0.95, 0.98]:
            iv = newcombe(*case, level)
            if level == 0.95 and case in NEWCOMBE_PUBLISHED:
                pub = NEWCOMBE_PUBLISHED[case]
                if any(abs(round(g, 4) - p) > 1e-9 for g, p in zip(iv, pub)):
                    sys.exit(f"Newcombe {case}: {iv} differs from the published {pub}")
            newcombe_cases.append({"baseline": case[:2], "candidate": case[2:], "level": level,
                                   "interval": iv})
    # one case per line keeps the checked-in fixture diffable
    lines = ['{"scipy": %s, "numpy": %s,' % (json.dumps(scipy.__version__),
                                               json.dumps(np.__version__)), ' "moses": [']
    lines.append(",\n".join("  " + json.dumps(c) for c in moses_cases))
    lines.append(' ],')
    lines.append(' "newcombe": [')
    lines.append(",\n".join("  " + json.dumps(c) for c in newcombe_cases))
    lines.append(' ]}')
    print("\n".join(lines))


if __name__ == "__main__":
    main()
