"""Training-data plumbing of the loop: :class:`FixedSource` (batches of a fixed set, rank-disjoint
under DDP), :class:`Prefetcher` (the next batch drawn on a background thread) and :func:`unpack`."""
from __future__ import annotations

import torch


class FixedSource:
    """Batches from a fixed training set, reshuffled every epoch by a ``DistributedSampler``
    (rank-disjoint shards under DDP). ``batch(step)`` is a pure function of (seed, rank, step)."""

    thread_prefetch = True  # see train_one's ``prefetch``

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, device="cpu"):
        from torch.utils.data.distributed import DistributedSampler

        self.images, self.labels, self.batch_size, self.device = images, labels, batch_size, torch.device(device)
        self.sampler = DistributedSampler(range(len(labels)), num_replicas=world_size, rank=rank, shuffle=True,
                                          seed=seed, drop_last=True)
        self.per_epoch = len(self.sampler) // batch_size
        if self.per_epoch < 1:
            raise ValueError(f"training set of {len(labels)} is smaller than one batch of {batch_size} per rank")
        self._epoch, self._idx = None, None

    def batch(self, step: int):
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._idx, self._epoch = torch.tensor(list(iter(self.sampler))), epoch
        idx = self._idx[i * self.batch_size:(i + 1) * self.batch_size]
        return (self.images[idx].to(self.device, non_blocking=True), self.labels[idx].to(self.device, non_blocking=True))


class Prefetcher:
    """``get(step)`` returns ``data.batch(step)``, having started ``data.batch(step + 1)`` on a background
    thread, so rendering the next batch overlaps with training on this one (torch ops release the GIL).
    ``batch`` is a pure function of ``step``, so the batches are the ones the plain loop would draw; one
    batch is in flight at a time, so the data source is never called concurrently. ``enabled=False``
    calls ``data.batch`` inline."""

    def __init__(self, data, stop: int, enabled: bool = True):
        self.data, self.stop, self.enabled = data, int(stop), bool(enabled)
        self._pool = self._next = None
        self._next_step = -1
        if self.enabled:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")

    def get(self, step: int):
        if not self.enabled:
            return self.data.batch(step)
        fut = self._next if self._next_step == step else self._pool.submit(self.data.batch, step)
        self._next, self._next_step = None, -1
        out = fut.result()
        if step + 1 < self.stop:  # submitted after taking this batch: the woken worker then competes for the
            # GIL with the training step, not with this hand-over (which otherwise waited ~5-10 ms for it)
            self._next, self._next_step = self._pool.submit(self.data.batch, step + 1), step + 1
        return out

    def close(self) -> None:
        if self._pool is not None:
            if self._next is not None:
                self._next.cancel()
            self._pool.shutdown(wait=True)
            self._pool = self._next = None


def unpack(batch) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, (tuple, list)):
        return batch[0], batch[1]
    return batch.images, batch.labels
