"""What a selection run is given and finds: its config, the plan rank 0 broadcasts, its clock and summary."""

from __future__ import annotations

import dataclasses
import time

from megatron_gm.config import check_settings, setting
from megatron_gm.errors import GMError
from megatron_gm.manifest import Manifest
from megatron_gm.selection.methods import METHODS, draw_seed

DOCS_PER_CLUSTER = 3000  # the paper's density, used when --gm-num-clusters is not given


@dataclasses.dataclass
class SelectConfig:
    """The selection's settings; each field is the flag of tools/select_data.py named in ``flag``."""

    output: str = setting(help="selection folder to write (what --gm-selection reads)", group="output")
    stage: int = setting(
        help="the stage that trains on this selection", flag="--gm-stage", low=0, group="output"
    )
    data_path: str | None = setting(None, "dataset prefix (the .bin/.idx without extension)", group="inputs")
    influence_model: str | None = setting(
        None, "influence model folder (scores the pool)", flag="--gm-influence-model", group="inputs"
    )
    scores_from: str | None = setting(
        None, "a finished scores folder: select without scoring", group="inputs"
    )
    scores_dir: str | None = setting(
        None, "where scoring writes its shards (default OUTPUT.scores)", group="inputs"
    )
    embed_cache: str | None = setting(
        None, "folder of pool embeddings kept across rounds; with a frozen encoder (influence --mode fast) "
        "later rounds only apply the new heads", group="inputs",
    )  # fmt: skip
    method: str = setting(
        "group",
        "group, individual, quota or random (the twin)",
        flag="--gm-select-method",
        choices=METHODS,
        group="selection",
    )
    ratio: float = setting(
        0.5, "share of each cluster to keep, in (0, 1]", flag="--gm-select-ratio", above=0, high=1,
        group="selection",
    )  # fmt: skip
    num_clusters: int | None = setting(
        None, "k-means clusters (default: about 3000 documents a cluster, as in the paper)",
        flag="--gm-num-clusters", low=1, group="selection",
    )  # fmt: skip
    seed: int = setting(
        1234, "k-means, Gumbel and random seed (paper: 1234)", low=0, high=2**31 - 1, group="selection"
    )
    temperature: float = setting(
        1.0, "Gumbel temperature (individual)", flag="--gm-select-temperature", low=0, group="selection"
    )
    kmeans_iters: int = setting(
        100, "k-means iterations (paper: 100)", flag="--gm-kmeans-iters", low=1, group="selection"
    )
    kmeans_points_per_centroid: int = setting(
        256, "k-means trains on a seeded sample of this many documents per centroid",
        flag="--gm-kmeans-points-per-centroid", low=1, group="selection",
    )  # fmt: skip
    shard_size: int = setting(1000, "documents per score shard (resume unit)", low=1, group="runtime")
    batch_size: int = setting(
        32, "encoder batch size when scoring", flag="--micro-batch-size", low=1, group="runtime"
    )
    threads: int = setting(1, "CPU threads per rank (torch, BLAS, faiss)", low=1, group="runtime")
    # scoring: "auto" = this rank's GPU if there is one, else CPU; or "cpu"
    device: str = setting(
        "auto", "scoring device (auto: a GPU if any)", choices=("auto", "cpu"), group="runtime"
    )
    overwrite: bool = setting(False, "replace an existing selection at --output", group="output")
    progress: bool = setting(
        True, "no progress bars (the summary line stays)", flag="--no-progress", group="runtime"
    )

    @property
    def draw_seed(self) -> int:
        """What k-means, Gumbel and random draw from: (seed, stage), so each round draws afresh."""
        return draw_seed(self.seed, self.stage)

    def validate(self) -> SelectConfig:
        check_settings(self)
        if (self.influence_model is None) == (self.scores_from is None):
            raise GMError("pass exactly one of --gm-influence-model (score the pool) and --scores-from")
        if self.influence_model is not None and not self.data_path:
            raise GMError("--gm-influence-model needs --data-path (the dataset prefix to score)")
        if self.scores_from is not None and (self.scores_dir is not None or self.embed_cache is not None):
            flag = "--scores-dir" if self.scores_dir is not None else "--embed-cache"
            raise GMError(f"{flag} is for scoring; with --scores-from nothing is scored")
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
