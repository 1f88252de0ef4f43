"""Do no harm: which model the index serves, decided from the held-out comparisons.
"""

from __future__ import annotations

from pipeline.eval.evidence import thin_warnings
from pipeline.params import InputError


def verdict(t: dict) -> str:
    """A paired comparison in words: better or worse when the 95% interval excludes zero."""
    return "better" if t["ci_low"] > 0 else "worse" if t["ci_high"] < 0 else "no significant difference"


def held_out_blocks(metrics: dict) -> dict[str, dict]:
    """Every held-out set's metrics block by name: the main test set, then data.testsets."""
    return {"test": metrics, **metrics.get("testsets", {})}


def serving_decision(metrics: dict, guards: list[str], evidence: dict[str, dict], metric: str,
                     validation: tuple[str, ...] = ("val_users",)) -> dict:
    """Do no harm: the base model is served when the fine-tuned one is significantly worse on a guard set. The
    decision names the sets it rests on that are thin evidence (evidence.set_evidence): guard sets, and the users'
    validation set that chose the merge weight."""
    blocks = held_out_blocks(metrics)
    unknown = [g for g in guards if g not in blocks]
    if unknown:
        raise InputError(f"params.yaml: evaluate.guards names {unknown}, not a held-out set ({sorted(blocks)})")
    worse = {g: blocks[g]["finetuned_vs_base"][metric] for g in guards if verdict(blocks[g]["finetuned_vs_base"][metric]) == "worse"}
    decision = {"model": "base" if worse else "finetuned", "guards": list(guards),
                "thin_evidence": [n for n in [*guards, *validation] if evidence.get(n, {}).get("thin")],
                "warnings": thin_warnings(evidence, guards, list(validation))}
    if worse:
        decision["reason"] = "; ".join(f"worse than the base model on {g}: {metric} {t['delta']:+.4f} "
                                       f"[{t['ci_low']:+.4f}, {t['ci_high']:+.4f}]" for g, t in worse.items())
    return decision
