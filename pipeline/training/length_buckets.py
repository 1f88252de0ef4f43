"""train: each column of a batch encoded in groups of similar length, so a few long texts do not pad all the others.

The collator pads a column to its longest text. With users' messages in the batches that is most of the query side:
on MedQuAD with `user_messages/` (20% of the rows) a batch's questions are padded to 125 tokens on average, 79% of
them padding around a median question of 16 tokens, and a step costs as if every question were a message. Sorted
by length and cut into `train.length_buckets` groups, each padded to its own longest, the same rows give the same
embeddings (padding is masked out: the same loss and gradients to 1e-6 in fp32, tests/test_train.py) at 1.24x the
plain sentence-transformers loop's steps a second on that data (bench/train_pace.py, bench/README.md). The batches,
the loss and the softmax are sentence-transformers' own; only the forward pass is split, as
CachedMultipleNegativesRankingLoss splits it into mini-batches for memory.
"""

from __future__ import annotations

import torch
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss


def embed_by_length(model, features: dict, buckets: int) -> torch.Tensor:
    """The sentence embeddings of one tokenized column, computed in `buckets` forward passes over rows of similar
    length, each cut to its own longest row; returned in the rows' order. One bucket: one forward pass, as the
    library does."""
    mask = features["attention_mask"]
    rows = mask.shape[0]
    if buckets <= 1 or rows < 2 * buckets:
        return model(features)["sentence_embedding"]
    lengths = mask.sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    parts = []
    for index in torch.tensor_split(order, buckets):
        width = int(lengths[index].max())
        part = {}
        for key, value in features.items():
            if torch.is_tensor(value) and value.shape[:2] == mask.shape:  # per token: input_ids, masks, type ids
                part[key] = value[index, :width]
            elif torch.is_tensor(value) and value.shape[:1] == (rows,):  # per row
                part[key] = value[index]
            else:
                part[key] = value
        parts.append(model(part)["sentence_embedding"])
    return torch.cat(parts)[torch.argsort(order)]


class LengthBucketedMNRL(MultipleNegativesRankingLoss):
    """MultipleNegativesRankingLoss with each column embedded by `embed_by_length`; the loss itself is the
    library's (`compute_loss_from_embeddings`)."""

    def __init__(self, model, buckets: int, **options):
        super().__init__(model, **options)
        self.buckets = int(buckets)

    def forward(self, sentence_features, labels):
        embeddings = [embed_by_length(self.model, features, self.buckets) for features in sentence_features]
        return self.compute_loss_from_embeddings(embeddings, labels)
