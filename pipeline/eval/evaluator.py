"""A sentence-transformers evaluator for the trainer's checks that reports the evaluate stage's own numbers.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.data.readers import read_beir
from pipeline.eval.metrics import per_query_metrics, summary
from pipeline.retrieval import dense_run


def validation_evaluator(folder: Path, name: str, batch_size: int):
    """A sentence-transformers evaluator (for the trainer's checks) that scores a BEIR folder with this module's
    retrieval and trec_eval metrics: the same numbers the evaluate stage reports.

    Written here rather than taken from InformationRetrievalEvaluator because that one takes binary relevance, and
    the users' validation questions are graded (pipeline/data/user_questions.py).
    """
    from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

    corpus, queries, qrels = read_beir(folder)
    cfg = {"mrr_k": 10, "ndcg_k": 10, "map_k": 10, "recall_k": [10], "depth": 10}

    class GradedRetrievalEvaluator(BaseEvaluator):
        def __init__(self):
            super().__init__()
            self.name, self.primary_metric = name, f"{name}_cosine_ndcg@10"

        def __call__(self, model, output_path=None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
            run, _, _ = dense_run(model, corpus, queries, cfg["depth"], batch_size)
            scores = summary(per_query_metrics(run, qrels, cfg), cfg)
            metrics = {f"{name}_cosine_{k}": v for k, v in scores.items() if k != "map@10"}
            self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
            return metrics

    return GradedRetrievalEvaluator()
