"""Do no harm: which model the index serves, decided from the held-out comparisons.
"""

from __future__ import annotations

from pipeline.params import InputError  # noqa: E402


def verdict(t: dict) -> str:
    """A paired comparison in words: better or worse when the 95% interval excludes zero."""
    return "better" if t["ci_low"] > 0 else "worse" if t["ci_high"] < 0 else "no significant difference"


def held_out_blocks(metrics: dict) -> dict[str, dict]:
    """Every held-out set's metrics block by name: the main test set, then data.testsets."""
    return {"test": metrics, **metrics.get("testsets", {})}


def serving_decision(metrics: dict, guards: list[str], sizes: dict[str, int], metric: str) -> dict:
    """Do no harm: the base model is served when the fine-tuned one is significantly worse on a guard set."""
    blocks = held_out_blocks(metrics)
    unknown = [g for g in guards if g not in blocks]
    if unknown:
        raise InputError(f"params.yaml: evaluate.guards names {unknown}, not a held-out set ({sorted(blocks)})")
    worse = {g: blocks[g]["finetuned_vs_base"][metric] for g in guards if verdict(blocks[g]["finetuned_vs_base"][metric]) == "worse"}
    decision = {"model": "base" if worse else "finetuned", "guards": list(guards),
                "warnings": [f"guard set {g} has {sizes[g]} judged questions (fewer than 20): its interval is too wide "
                             "to guard anything" for g in guards if sizes[g] < 20]}
    if worse:
        decision["reason"] = "; ".join(f"worse than the base model on {g}: {metric} {t['delta']:+.4f} "
                                       f"[{t['ci_low']:+.4f}, {t['ci_high']:+.4f}]" for g, t in worse.items())
    return decision
