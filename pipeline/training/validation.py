"""The validation score that chooses the checkpoint and the merge weight, and the record of the checkpoint kept.

The score is the mean NDCG@10 of two sets: the FAQ-style validation split and questions as users write them (the
user's own, or messages made by pipeline/data/user_questions.py). A model that gains on the FAQ's wording and
loses on users' cannot win on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.eval.evaluator import validation_evaluator

BEST_METRIC = "sequential_score"  # the mean of val_cosine_ndcg@10 and val_users_cosine_ndcg@10


def kept_evaluation(log_history: list[dict], best_step: int | None, metric: str = f"eval_{BEST_METRIC}") -> dict | None:
    """The validation record of the checkpoint training kept: the evaluation at trainer.state.best_global_step.

    The step-0 evaluation (eval_on_start, the untrained model) is never it, however well it scored: no checkpoint
    is saved at step 0, so load_best_model_at_end cannot go back to it (transformers does not count it for
    best_global_step either). With no best step recorded the final weights are kept: their (last) evaluation.
    None when nothing after step 0 was evaluated.
    """
    trained = [h for h in log_history if metric in h and h.get("step", 0) > 0]
    if best_step:
        return next((h for h in trained if h["step"] == best_step), None)
    return trained[-1] if trained else None


VALIDATION_SETS = ("val", "val_users")


def validation(prepared: Path):
    """Both validation sets in one sentence-transformers evaluator, scored as the evaluate stage scores them."""
    from sentence_transformers.sentence_transformer.evaluation import SequentialEvaluator

    evaluators = [validation_evaluator(prepared / name, name, batch_size=64) for name in VALIDATION_SETS]
    return SequentialEvaluator(evaluators, main_score_function=lambda scores: float(np.mean(scores)))
