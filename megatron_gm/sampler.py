"""The selection-driven batch sampler: which stage-dataset sample each stage position trains on.

A stage trains on a dataset of ``samples_per_pass`` packed samples (Megatron's GPTDataset over the
selected documents, one epoch). Stage position ``k`` (0, 1, 2, ... in the order the global batches
consume them) falls in pass ``k // samples_per_pass``; each pass is a fresh permutation of all samples,
drawn from ``(seed, stage, pass)``. So every sample is trained on exactly once per pass, the order is
a pure function of the position (resuming mid-stage only needs the stage-relative consumed count), and
data-parallel ranks take their slice of each global micro-batch group exactly like Megatron's
``MegatronPretrainingSampler``: rank ``r`` gets positions ``[r * mbs, (r + 1) * mbs)`` of every
``mbs * dp`` consecutive ones.

No torch import: the sampler is plain Python/numpy so tools and tests can replay a stage's order.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from megatron_gm.errors import GMError


@dataclasses.dataclass
class SamplerConfig:
    samples_per_pass: int
    seed: int
    stage: int
    micro_batch_size: int
    data_parallel_size: int = 1
    data_parallel_rank: int = 0

    def validate(self) -> SamplerConfig:
        if self.samples_per_pass <= 0:
            raise GMError(
                "the stage dataset holds no sample: the selection has fewer tokens than one sequence"
            )
        if self.micro_batch_size <= 0 or self.data_parallel_size <= 0:
            raise GMError("micro batch size and data-parallel size must be positive")
        if not 0 <= self.data_parallel_rank < self.data_parallel_size:
            raise GMError(
                f"data-parallel rank {self.data_parallel_rank} outside 0..{self.data_parallel_size - 1}"
            )
        return self


class StageOrder:
    """Stage position -> stage-dataset sample index, built one pass at a time."""

    def __init__(self, samples_per_pass: int, seed: int, stage: int):
        self.n = int(samples_per_pass)
        self.seed = int(seed)
        self.stage = int(stage)
        self._pass = -1
        self._perm: np.ndarray | None = None

    def permutation(self, pass_index: int) -> np.ndarray:
        """The order of pass ``pass_index`` (cached: the current pass only)."""
        if pass_index != self._pass:
            rng = np.random.default_rng([self.seed, self.stage, pass_index])
            self._perm = rng.permutation(self.n)
            self._pass = pass_index
        return self._perm

    def samples(self, start: int, stop: int) -> np.ndarray:
        """Sample indices for stage positions ``[start, stop)`` (may cross passes)."""
        out = np.empty(max(stop - start, 0), dtype=np.int64)
        pos = start
        while pos < stop:
            p, off = divmod(pos, self.n)
            take = min(stop - pos, self.n - off)
            out[pos - start : pos - start + take] = self.permutation(p)[off : off + take]
            pos += take
        return out


class SelectionSampler:
    """Megatron batch sampler: yields this DP rank's micro-batches from stage position ``consumed`` on.

    ``consumed`` is stage-relative (Megatron's consumed_train_samples minus the stage's first sample);
    ``total`` is the stage's budget in samples (the sampler stops there, like Megatron's).
    """

    def __init__(self, config: SamplerConfig, consumed: int, total: int):
        self.config = config.validate()
        group = config.micro_batch_size * config.data_parallel_size
        if consumed < 0 or consumed % group:
            raise GMError(
                f"cannot resume at stage sample {consumed}: not a multiple of micro batch x data-parallel "
                f"size ({group}); the checkpoint does not belong to this stage layout"
            )
        if consumed >= total:
            raise GMError(f"nothing left in this stage: {consumed} of its {total} samples already consumed")
        self.consumed = consumed
        self.total = total
        self.group = group
        self.order = StageOrder(config.samples_per_pass, config.seed, config.stage)

    def __len__(self) -> int:
        return self.total

    def batch_positions(self, j: int) -> tuple[int, int]:
        """Stage positions [start, stop) of the ``j``-th micro-batch this rank yields."""
        start = self.consumed + j * self.group + self.config.data_parallel_rank * self.config.micro_batch_size
        return start, start + self.config.micro_batch_size

    def batch(self, j: int) -> list[int]:
        start, stop = self.batch_positions(j)
        return self.order.samples(start, stop).tolist()

    def num_batches(self) -> int:
        return (self.total - self.consumed) // self.group

    def __iter__(self):
        for j in range(self.num_batches()):
            yield self.batch(j)
