"""The loss named in params.yaml, with the training dataset in the column layout it expects.
"""

from __future__ import annotations

import torch
from datasets import Dataset

from pipeline.params import InputError
from pipeline.training.length_buckets import LengthBucketedMNRL


def in_batch_negatives_loss(name: str, model, cfg: dict):
    """(Cached)MultipleNegativesRankingLoss with the options params.yaml gives, passed to sentence-transformers as
    they are: which similarity terms enter the softmax (GTE: all four directions), its scale (= 1/temperature), and
    hardness weighting of the negatives (Lan et al. 2025). The plain loss embeds each column in groups of similar
    length (train.length_buckets: pipeline/training/length_buckets.py); the cached one has its own mini-batches."""
    from sentence_transformers.sentence_transformer import losses

    options = {"scale": float(cfg["scale"]), "directions": tuple(cfg["directions"]),
               "hardness_mode": cfg["hardness_mode"], "hardness_strength": float(cfg["hardness_strength"])}
    if name == "CachedMultipleNegativesRankingLoss":
        # GradCache: a large effective batch (more in-batch negatives) in the memory of a small one
        options["mini_batch_size"] = int(cfg["mini_batch_size"])
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        # every process's batch enters every softmax: N processes with batch b train as one batch of N x b
        options["gather_across_devices"] = True
    try:
        if name == "MultipleNegativesRankingLoss" and int(cfg["length_buckets"]) > 1:
            return LengthBucketedMNRL(model, int(cfg["length_buckets"]), **options)
        return getattr(losses, name)(model, **options)
    except ValueError as e:  # the library's own check of the options
        raise InputError(f"params.yaml: train: {e}") from None


def guided_loss(name: str, model, guide, cfg: dict):
    """GISTEmbedLoss (Solatorio 2024), or its cached form: in-batch negatives that the frozen `guide` (the base
    model) scores above the positive are left out of the softmax, since they are likely answers too; a user's
    message about one subject often has several right answers in a batch of whole groups. Its temperature is
    1 / train.scale, as for MNRL."""
    from sentence_transformers.sentence_transformer import losses

    options = {"temperature": 1.0 / float(cfg["scale"])}
    if name == "CachedMultipleNegativesRankingLoss":
        options["mini_batch_size"] = int(cfg["mini_batch_size"])
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        options["gather_across_devices"] = True
    gist = losses.CachedGISTEmbedLoss if name == "CachedMultipleNegativesRankingLoss" else losses.GISTEmbedLoss
    return gist(model, guide=guide, **options)


def build_loss(name: str, model, train_rows: list[dict], cfg: dict, guide=None):
    """The loss named in params, and the training dataset in the column layout that loss expects. With a `guide`
    model (train.guide: base), the in-batch-negatives losses become their GIST form (`guided_loss`)."""
    from sentence_transformers.sentence_transformer import losses

    negatives = sorted(k for k in train_rows[0] if k.startswith("negative_"))
    columns = ["anchor", "positive", *negatives]
    if name in ("MultipleNegativesRankingLoss", "CachedMultipleNegativesRankingLoss"):
        loss = guided_loss(name, model, guide, cfg) if guide is not None else in_batch_negatives_loss(name, model, cfg)
    elif name == "TripletLoss":
        if not negatives:
            raise InputError("params.yaml: train.loss TripletLoss needs prepare.negatives.num >= 1")
        loss, columns = losses.TripletLoss(model), ["anchor", "positive", "negative_1"]
    elif name == "CosineSimilarityLoss":
        # pairs labelled 1.0 (question, answer) and 0.0 (question, mined negative), as in the seed article
        rows = [(r["anchor"], r["positive"], 1.0) for r in train_rows]
        rows += [(r["anchor"], r[n], 0.0) for r in train_rows for n in negatives]
        data = Dataset.from_dict({"sentence1": [r[0] for r in rows], "sentence2": [r[1] for r in rows],
                                  "score": [r[2] for r in rows]})
        return losses.CosineSimilarityLoss(model), data
    else:
        raise InputError(f"params.yaml: train.loss {name!r} is not one of MultipleNegativesRankingLoss, "
                         "CachedMultipleNegativesRankingLoss, TripletLoss, CosineSimilarityLoss")
    if cfg.get("matryoshka_dims"):
        loss = losses.MatryoshkaLoss(model, loss, matryoshka_dims=list(cfg["matryoshka_dims"]))
    data = Dataset.from_dict({c: [r[c] for r in train_rows] for c in columns})
    return loss, data
