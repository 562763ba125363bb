"""``train.packing = bucket``: micro-batches of rows of similar length, as many as fit a token budget.

Packing makes every micro-batch hold about micro_batch x max_seq_len real tokens by joining rows into
one sequence whose segments are kept apart in attention. That needs a variable-length attention
kernel (flash-attn, xformers, or torch >= 2.12's varlen_attn under Unsloth); without one, each
segment gets its own attention call. Buckets reach the same fill without segments: rows of similar
length side by side in one padded micro-batch (a short chat turn with its peers, a long reasoning
trace with its), so attention stays the plain causal kernel and padding stays small.

The batches are fixed for the run (seeded), and only their order changes per epoch, so the number of
steps is known up front and a resumed run skips exactly the batches it has trained.
"""

from __future__ import annotations

import random

# Rows sorted together: long enough to find peers of similar length, short enough that the order
# of the data still mixes sources across the run.
POOL_BATCHES = 32


def bucket_batches(lengths: list[int], micro_batch: int, max_seq_len: int, seed: int) -> list[list[int]]:
    """Row indices per micro-batch: each padded batch (rows x its longest row) fits micro_batch x
    max_seq_len tokens; rows come from shuffled pools, sorted by length within a pool."""
    budget = micro_batch * max_seq_len
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    pool_tokens = POOL_BATCHES * budget
    start = 0
    while start < len(order):
        end, tokens = start, 0
        while end < len(order) and (tokens < pool_tokens or end == start):
            tokens += lengths[order[end]]
            end += 1
        pool = sorted(order[start:end], key=lambda i: -lengths[i])
        batch: list[int] = []
        for i in pool:  # longest first, so the batch's first row sets its padded length
            if batch and (len(batch) + 1) * lengths[batch[0]] > budget:
                batches.append(batch)
                batch = []
            batch.append(i)
        if batch:
            batches.append(batch)
        start = end
    rng.shuffle(batches)  # short and long batches interleave instead of running in blocks
    return batches


def make_sampler(lengths: list[int], micro_batch: int, max_seq_len: int, seed: int):
    """A batch sampler for the Hugging Face Trainer over :func:`bucket_batches`.

    It subclasses transformers' BatchRebalanceSampler only because Trainer._get_dataloader passes an
    instance of that class to the DataLoader as its ``batch_sampler`` (variable rows per batch);
    none of the parent's logic is used (tests/train/test_batching.py checks the trainer really
    yields these batches)."""
    from transformers.trainer_pt_utils import BatchRebalanceSampler

    class BucketSampler(BatchRebalanceSampler):
        def __init__(self):  # noqa: D107  (the parent's __init__ is not wanted)
            self.batches = bucket_batches(lengths, micro_batch, max_seq_len, seed)
            self.seed = seed
            self.epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self):
            order = list(range(len(self.batches)))
            if self.epoch:
                random.Random(self.seed * 1000003 + self.epoch).shuffle(order)
            for k in order:
                yield list(self.batches[k])

        def __len__(self) -> int:
            return len(self.batches)

    return BucketSampler()


def install(trainer, micro_batch: int, max_seq_len: int, seed: int) -> None:
    """Make ``trainer`` draw its training batches from buckets of its own (processed) train set."""

    def get_train_sampler(train_dataset=None):
        dataset = train_dataset if train_dataset is not None else trainer.train_dataset
        lengths = [len(x) for x in dataset["input_ids"]]
        return make_sampler(lengths, micro_batch, max_seq_len, seed)

    trainer._get_train_sampler = get_train_sampler
