"""The training order: a function of (seed, epoch), DDP-consistent, resumable mid-epoch."""

from __future__ import annotations

import torch
from torch.utils.data import DistributedSampler

from maskrank.data import SyntheticLowRank
from maskrank.data.order import EpochShuffleSampler, ResumableDataLoader
from maskrank.data.pairs import TensorPairs, keep_batch

N = 24


def _pairs() -> TensorPairs:
    images = torch.arange(N, dtype=torch.uint8).view(N, 1, 1, 1).expand(N, 1, 2, 2).contiguous()
    return TensorPairs(images, torch.arange(N))


def _labels(loader) -> list[list[int]]:
    return [labels.tolist() for _, labels in loader]


def test_each_epoch_is_the_distributed_sampler_permutation():
    sampler = EpochShuffleSampler(range(N), seed=3)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        reference = DistributedSampler(range(N), num_replicas=1, rank=0, shuffle=True, seed=3)
        reference.set_epoch(epoch)
        assert list(sampler) == list(reference)
        assert list(sampler) == list(sampler)  # re-iterating an epoch repeats it
        orders.append(list(sampler))
    assert orders[0] != orders[1] != orders[2] and sorted(orders[0]) == list(range(N))


def test_two_ranks_with_half_batches_see_the_single_process_batches():
    batch = 6
    single = list(EpochShuffleSampler(range(N), seed=0))
    ranks = [
        list(DistributedSampler(range(N), num_replicas=2, rank=r, shuffle=True, seed=0))
        for r in (0, 1)
    ]
    for step in range(N // batch):
        half = slice(step * batch // 2, (step + 1) * batch // 2)
        together = sorted(ranks[0][half] + ranks[1][half])
        assert together == sorted(single[step * batch : (step + 1) * batch])


def test_a_resumed_loader_starts_inside_its_epoch_then_runs_whole_epochs():
    data = _pairs()

    def loader(**position) -> ResumableDataLoader:
        sampler = EpochShuffleSampler(data, seed=0)
        return ResumableDataLoader(
            data, batch_size=4, sampler=sampler, collate_fn=keep_batch, drop_last=True, **position
        )

    fresh = loader()
    fresh.sampler.set_epoch(1)
    epoch1 = _labels(fresh)
    resumed = loader(start_epoch=1, skip_batches=2)
    assert _labels(resumed) == epoch1[2:]  # the rest of epoch 1 ...
    resumed.sampler.set_epoch(2)
    fresh.sampler.set_epoch(2)
    assert _labels(resumed) == _labels(fresh)  # ... then whole epochs
    assert len(resumed) == N // 4  # Lightning still counts the whole epoch


def test_iterating_the_loaders_never_draws_from_the_global_rng():
    # a DataLoader without its own generator draws a worker seed from torch's global RNG at
    # every iter(); that would shift the augmentations of a resumed run against the original
    dm = SyntheticLowRank(num_classes=2, class_rank=2, train_size=32, val_size=16, batch_size=8)
    dm.setup("fit")
    before = torch.get_rng_state()
    for _ in range(2):
        list(dm.train_dataloader())
        list(dm.val_dataloader())
    assert torch.equal(torch.get_rng_state(), before)
