"""Means, standard deviations and Student-t 95% intervals over seeds, and paired differences.

A row's interval is mean +- t(0.975, n-1) * s / sqrt(n), s the sample standard deviation (n - 1 in
the denominator). A paired difference is the same statistic of the per-seed differences
row(seed) - reference(seed), over the seeds both rows have.
"""

import math

LEVEL = 0.95


def t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer df >= 1: the closed forms of Abramowitz & Stegun
    26.7.3 (df odd) and 26.7.4 (df even), with theta = atan(t / sqrt(df))."""
    theta = math.atan(t / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:  # sin(theta) (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ... up to cos^(df-2))
        term = total = 1.0
        for k in range(2, df, 2):
            term *= (k - 1) / k * c2
            total += term
        return s * total
    if df == 1:
        return 2 * theta / math.pi
    term = total = math.cos(theta)  # cos + 2/3 cos^3 + 2*4/(3*5) cos^5 + ... up to cos^(df-2)
    for k in range(3, df, 2):
        term *= (k - 1) / k * c2
        total += term
    return 2 / math.pi * (theta + s * total)


def t_critical(df: int, level: float = LEVEL) -> float:
    """t such that P(|T| < t) = level, by bisection (e.g. 12.706 for df 1, 2.228 for df 10)."""
    lo, hi = 0.0, 1.0
    while t_two_sided_mass(hi, df) < level:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided_mass(mid, df) < level else (lo, mid)
    return (lo + hi) / 2


def summary(values: list[float]) -> dict:
    """{n, mean, std, ci95: [lo, hi]}; std and ci95 are None for a single value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "ci95": None}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_critical(n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def paired(row: dict, reference: dict) -> dict | None:
    """Summary of row[seed] - reference[seed] over the seeds both have (None when they share none)."""
    seeds = [s for s in row if s in reference]
    if not seeds:
        return None
    diffs = [row[s] - reference[s] for s in seeds]
    return {**summary(diffs), "seeds": seeds, "differences": diffs}
