"""Merging the fine-tuned weights with the base model (WiSE-FT, LM-Cocktail), and choosing the weight.
"""

from __future__ import annotations

import logging

import torch

from pipeline.training.validation import BEST_METRIC, VALIDATION_SETS

log = logging.getLogger("pipeline.train")


def merged_state(base: dict, tuned: dict, alpha: float) -> dict:
    """WiSE-FT (Wortsman et al. 2022) / LM-Cocktail's merge: (1 - alpha) * base + alpha * fine-tuned, weight by weight.

    Fine-tuning on one FAQ's wording moves the model away from what it knew of every other wording; averaging
    with the base weights keeps most of the gain and much of that knowledge (bench/README.md).
    """
    return {k: torch.lerp(base[k].to(v.dtype), v, alpha) if v.is_floating_point() else v for k, v in tuned.items()}


def choose_merge(merges: dict[float, dict], before: dict, keys: list[str], floor: float = 0.005) -> float:
    """The merge weight whose smaller gain, over the validation sets, is the largest: each set's gain over the base
    model (`before`, the step-0 evaluation) as a share of the best gain any weight reaches on it.

    Shares, not raw scores: the FAQ-style split gains 0.15 NDCG@10 and the users' questions 0.01, and a plain mean
    lets the first outvote the second; on MedQuAD it then chose a weight that lost on real users' questions
    (bench/README.md). A best gain under `floor` counts as `floor`, so that noise is not divided by noise. Ties go
    to the larger mean score.
    """
    base = {k: before[f"eval_{k}"] for k in keys}
    best = {k: max(max(m[k] for m in merges.values()) - base[k], floor) for k in keys}
    share = {a: min((m[k] - base[k]) / best[k] for k in keys) for a, m in merges.items()}
    return max(merges, key=lambda a: (round(share[a], 4), round(merges[a][BEST_METRIC], 4), a))


def merge_with_base(model, base_state: dict, evaluator, alphas: list[float], validate) -> tuple[float, dict, dict]:
    """Score the trained model merged with the base model at each weight (1.0: as trained) on validation, load the
    chosen one into `model`, and return its weight, every weight's scores and the base model's. `validate(evaluator, model)` scores
    (the same on every process under DDP, so every process makes the same choice). The base model (weight 0.0) is
    always scored: it is the reference each gain is measured from."""
    tuned = {k: v.detach().clone() for k, v in model.state_dict().items()}
    merges = {}
    for alpha in sorted({0.0, *(float(a) for a in alphas)}):
        model.load_state_dict(merged_state(base_state, tuned, alpha))
        merges[alpha] = validate(evaluator, model)
        log.info("merge %.2f: val NDCG@10 %.4f, val_users NDCG@10 %.4f", alpha,
                 merges[alpha]["val_cosine_ndcg@10"], merges[alpha]["val_users_cosine_ndcg@10"])
    # the base model's scores are measured here, beside the candidates and at the same precision (not the step-0
    # evaluation of training, which ran in the training precision): the gaps that decide are of that size
    reference = {f"eval_{k}": v for k, v in merges[0.0].items()}
    candidates = {a: m for a, m in merges.items() if a in {float(x) for x in alphas}}
    alpha = choose_merge(candidates, reference, [f"{name}_cosine_ndcg@10" for name in VALIDATION_SETS])
    model.load_state_dict(merged_state(base_state, tuned, alpha))
    return alpha, candidates, merges[0.0]
