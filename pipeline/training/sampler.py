"""train: batches of whole groups with no text twice in a batch, for the in-batch negative losses."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from sentence_transformers.base.sampler import DefaultBatchSampler

from pipeline.data.readers import normalize


class GroupedNoDuplicatesBatchSampler(DefaultBatchSampler):
    """Batches made of whole groups (one FAQ focus, one document), as in topic-aware sampling (TAS-B,
    Hofstätter et al. 2021), with no text twice in a batch.

    With random batches a question almost never meets the other answers about its own subject, so in-batch
    negatives teach "which disease" but not "which question about it" (symptoms, causes, treatment, genetics),
    which is most of what the base model gets wrong. Here the groups are shuffled, each one's rows stay together,
    and the stream is cut into batches: those answers become the in-batch negatives, at no extra encoding cost
    (a mined negative doubles the passages per pair). sentence-transformers has no such sampler for in-batch
    negative losses: GROUP_BY_LABEL deals labels two rows at a time for the triplet losses.
    As NO_DUPLICATES, a row whose text is already in the batch waits for the next one; so does a row whose
    normalised question is: a question asked twice with two answers has two right answers, neither a negative.
    Mined negatives too: rows that share one wait. On MedQuAD with one negative a pair that makes 431 batches an
    epoch, 257 full and about 170 of a single pair (one passage is the hardest negative of many questions), and
    validation preferred it to letting those rows share a batch (265 batches, 259 full): 0.9454 against 0.9395,
    mean NDCG@10 of val and val_users, at 0.98x the pairs trained a second (bench/README.md).

    Under DDP (torchrun) every process builds these same batches (seeded by seed and epoch, never by rank) and
    accelerate deals them round-robin, batch i to rank i % N, in whole rounds only, so every process takes the same
    number of steps. One round is one optimizer step, and the loss gathers its N batches into one softmax
    (gather_across_devices): so the no-repeat rule holds for the round, not for each batch alone. A global batch
    of N x batch_size rows is built under the rule and cut into the N batches of its round; a row that waits
    goes to the next step, never to another rank's share of the same one. sentence-transformers sets drop_last,
    since the loss gathers equal-sized batches: an incomplete last round sits out this epoch; the next one is
    shuffled anew (tests/test_ddp.py).
    """

    def __init__(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0,
                 groups=None, processes: int = 1):
        super().__init__(dataset, batch_size=batch_size, drop_last=drop_last,
                         valid_label_columns=valid_label_columns, generator=generator, seed=seed)
        self.groups = list(groups)
        self.processes = int(processes)
        # what may not repeat within a batch, per row: every text, and the normalised question
        self.keys = [{"q:" + normalize(row[0])} | {"t:" + text for text in row} for row in zip(
            *(dataset[c] for c in dataset.column_names if c not in (valid_label_columns or [])))]

    def __len__(self) -> int:
        # exactly what __iter__ yields this epoch: clashing rows that wait can add (short) batches
        return len(self._epoch_batches())

    def __iter__(self):
        yield from self._epoch_batches()

    def _epoch_batches(self) -> list[list[int]]:
        """The batches of the current epoch, computed once per (seed, epoch): deterministic, so len() and iter()
        agree however often the trainer asks."""
        key = (self.seed, self.epoch)
        if getattr(self, "_cache", (None,))[0] != key:
            self._cache = (key, list(self._make_batches()))
        return self._cache[1]

    def _make_batches(self):
        rng = np.random.default_rng(self.seed + self.epoch)
        members = defaultdict(list)
        for row, group in enumerate(self.groups):
            members[group].append(row)
        order = list(members)
        rng.shuffle(order)
        pending = [int(row) for group in order for row in rng.permutation(members[group])]
        size = self.batch_size * self.processes  # one optimizer step: every process's batch of it
        while pending:
            # take rows in stream order; a clashing row waits and goes first in the next step
            batch, seen, waiting = [], set(), []
            for i, row in enumerate(pending):
                if len(batch) == size:
                    waiting += pending[i:]
                    break
                if self.keys[row] & seen:
                    waiting.append(row)
                else:
                    batch.append(row)
                    seen |= self.keys[row]
            pending = waiting
            if len(batch) == size or not self.drop_last:
                # one process: the batch; N: the round's N batches, dealt one per rank by accelerate
                yield from (batch[i:i + self.batch_size] for i in range(0, len(batch), self.batch_size))
