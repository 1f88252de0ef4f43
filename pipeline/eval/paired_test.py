"""Is a difference real? A paired bootstrap interval and randomisation test, clustered by topic.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats


def paired_test(a: pd.Series, b: pd.Series, samples: int, seed: int, topics: pd.Series | None = None) -> dict[str, float]:
    """Mean of a - b over the same queries, its 95% paired-bootstrap interval and a two-sided randomisation p-value.

    With `topics` (query id -> topic) the unit resampled is a topic, not a question: questions about one topic are
    not independent, and counting them as such would make the interval too narrow (a cluster bootstrap).
    """
    diff = (a - b).to_numpy(dtype=float)
    if np.allclose(diff, 0):
        return {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}
    if topics is None:
        units = pd.Series(np.arange(len(a)), index=a.index)
    else:
        units = topics.reindex(a.index).fillna(pd.Series(a.index, index=a.index))
    frame = pd.DataFrame({"a": a.to_numpy(float), "b": b.to_numpy(float), "unit": units.to_numpy()})
    per_unit = frame.groupby("unit").agg(a=("a", "sum"), b=("b", "sum"), n=("a", "size"))
    sums, counts = (per_unit["a"] - per_unit["b"]).to_numpy(), per_unit["n"].to_numpy(float)
    boot = scipy_stats.bootstrap((sums, counts), lambda s, n, axis: s.sum(axis=axis) / n.sum(axis=axis), paired=True,
                                 vectorized=True, n_resamples=samples, confidence_level=0.95, method="percentile",
                                 rng=np.random.default_rng(seed))
    # paired randomisation test: under H0 the two systems' scores are exchangeable within each unit (sign flips of
    # a unit's summed difference; with a fixed number of questions its mean is the statistic)
    perm = scipy_stats.permutation_test((per_unit["a"].to_numpy(), per_unit["b"].to_numpy()),
                                        lambda x, y, axis: np.mean(x - y, axis=axis),
                                        permutation_type="samples", n_resamples=samples, alternative="two-sided",
                                        vectorized=True, rng=np.random.default_rng(seed))
    return {"delta": round(float(diff.mean()), 4) + 0.0, "ci_low": round(float(boot.confidence_interval.low), 4),
            "ci_high": round(float(boot.confidence_interval.high), 4), "p_value": round(float(perm.pvalue), 4)}
