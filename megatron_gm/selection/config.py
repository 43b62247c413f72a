"""What a selection run is given and finds: its config, the plan rank 0 broadcasts, its clock and summary."""

from __future__ import annotations

import dataclasses
import math
import time

from megatron_gm.errors import GMError
from megatron_gm.manifest import Manifest
from megatron_gm.selection.methods import METHODS, draw_seed

DOCS_PER_CLUSTER = 3000  # the paper's density, used when --gm-num-clusters is not given


@dataclasses.dataclass
class SelectConfig:
    output: str
    stage: int
    data_path: str | None = None
    influence_model: str | None = None
    scores_from: str | None = None
    scores_dir: str | None = None
    embed_cache: str | None = None  # folder of pool embeddings reused across rounds (frozen encoder only)
    method: str = "group"
    ratio: float = 0.5
    num_clusters: int | None = None  # None: about DOCS_PER_CLUSTER documents a cluster
    seed: int = 1234
    temperature: float = 1.0  # individual only
    kmeans_iters: int = 100
    kmeans_points_per_centroid: int = 256
    shard_size: int = 1000
    batch_size: int = 32
    threads: int = 1
    device: str = "auto"  # scoring: "auto" = this rank's GPU if there is one, else CPU; or "cpu"
    overwrite: bool = False
    progress: bool = True

    @property
    def draw_seed(self) -> int:
        """What k-means, Gumbel and random draw from: (seed, stage), so each round draws afresh."""
        return draw_seed(self.seed, self.stage)

    def validate(self) -> SelectConfig:
        if self.method not in METHODS:
            raise GMError(f"--gm-select-method {self.method!r} unknown; choose one of {', '.join(METHODS)}")
        if not (math.isfinite(self.ratio) and 0 < self.ratio <= 1):
            raise GMError(f"--gm-select-ratio must be in (0, 1], got {self.ratio}")
        if self.num_clusters is not None and self.num_clusters < 1:
            raise GMError(f"--gm-num-clusters must be >= 1, got {self.num_clusters}")
        if (self.influence_model is None) == (self.scores_from is None):
            raise GMError("pass exactly one of --gm-influence-model (score the pool) and --scores-from")
        if self.influence_model is not None and not self.data_path:
            raise GMError("--gm-influence-model needs --data-path (the dataset prefix to score)")
        if self.scores_from is not None and (self.scores_dir is not None or self.embed_cache is not None):
            flag = "--scores-dir" if self.scores_dir is not None else "--embed-cache"
            raise GMError(f"{flag} is for scoring; with --scores-from nothing is scored")
        if self.device not in ("auto", "cpu"):
            raise GMError(f"--device must be auto or cpu, got {self.device!r}")
        if self.stage < 0:
            raise GMError(f"--gm-stage must be >= 0, got {self.stage}")
        if not 0 <= self.seed < 2**31:
            raise GMError(f"--seed must be in [0, 2**31), got {self.seed}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise GMError(f"--gm-select-temperature must be >= 0, got {self.temperature}")
        for name in ("kmeans_iters", "kmeans_points_per_centroid", "shard_size", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise GMError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        return self

    @property
    def scores_folder(self) -> str:
        return self.scores_from or self.scores_dir or f"{self.output.rstrip('/')}.scores"


@dataclasses.dataclass
class Plan:
    """What rank 0 found in the inputs, broadcast to every rank."""

    fingerprint: str
    num_docs: int
    num_clusters: int
    alpha: float
    tau: float
    model_hash: str
    iteration: int | None
    scores: Manifest
    embed: Manifest | None = None  # the pool-embedding cache's manifest (None: no cache)


class Clock:
    """Wall and CPU seconds per phase; CPU time is this process's, all threads (robust to a busy machine)."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._w, self._c = time.perf_counter(), time.process_time()

    def lap(self, name: str) -> None:
        w, c = time.perf_counter(), time.process_time()
        self.wall[name] = self.wall.get(name, 0.0) + w - self._w
        self.cpu[name] = self.cpu.get(name, 0.0) + c - self._c
        self._w, self._c = w, c


@dataclasses.dataclass
class Summary:
    docs: int
    docs_scored: int
    clusters: int
    selected: int
    seconds: dict[str, float]  # wall, rank 0
    cpu_seconds: dict[str, float]  # summed over ranks

    def line(self) -> str:
        score_s, score_cpu = self.seconds.get("score", 0.0), self.cpu_seconds.get("score", 0.0)
        rate = "n/a"
        if self.docs_scored and score_s > 0 and score_cpu > 0:
            rate = f"{self.docs_scored / score_s:.1f}, {self.docs_scored / score_cpu:.2f} per CPU-second"
        phases = " ".join(f"{k} {v:.2f}" for k, v in self.seconds.items())
        cpu = " ".join(f"{k} {v:.2f}" for k, v in self.cpu_seconds.items())
        return (
            f"select_data: docs {self.docs}, scored {self.docs_scored} (docs/s {rate}), "
            f"clusters {self.clusters}, selected {self.selected}; seconds: {phases}; "
            f"CPU-seconds, all ranks: {cpu}"
        )
