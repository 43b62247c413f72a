"""The selection run across ranks: score, cluster, assign, select, gather, write (METHOD.md step 4).

Every phase's result is independent of the number of ranks: shards have fixed boundaries, centroids are
trained on rank 0 only (seeded sample, fixed threads), a cluster's selection only depends on its own
documents (in document order), and rank 0 sorts the gathered indices. So 1, 2 or 4 ranks write the same
artifact bytes. The scores folder (``--scores-dir``) must be on a file system every rank sees.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from megatron_gm.data.selection import save_selection
from megatron_gm.errors import GMError, ManifestMismatch
from megatron_gm.fs import write_folder
from megatron_gm.manifest import Manifest
from megatron_gm.selection.cluster import assign, kmeans_sample, train_centroids
from megatron_gm.selection.comm import Comm
from megatron_gm.selection.methods import (
    METHODS,
    PER_CLUSTER,
    cluster_quotas,
    draw_seed,
    select_in_cluster,
    select_individual,
    select_random,
)
from megatron_gm.selection.scores import (
    num_shards,
    open_scores,
    read_shard,
    scores_manifest,
    shard_range,
)
from megatron_gm.shards import ShardSet

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


# -- phase 0: inputs --------------------------------------------------------------------------------------


def check_output(cfg: SelectConfig) -> None:
    out = Path(cfg.output)
    if not out.exists():
        return
    if not cfg.overwrite:
        raise GMError(f"{out}: exists; pass --overwrite to replace it, or choose another --output")
    try:
        kind = Manifest.load(out / "manifest.json").kind
    except GMError:
        kind = None
    if kind != "selection":
        raise GMError(f"{out}: exists and is not a selection artifact; refusing to replace it")


def prepare(cfg: SelectConfig, model_box: dict) -> Plan:
    """Rank 0: check every input before any work; lock and open (or create) the output folders."""
    from megatron_gm.procs import lock_output

    check_output(cfg)
    lock_output(cfg.output, "--output")
    if cfg.scores_from is None:
        lock_output(cfg.scores_folder, "the scores (--scores-dir)")
    if cfg.scores_from is not None:
        _, sman = open_scores(cfg.scores_from)
        fingerprint = sman.dataset_fingerprint
        if cfg.data_path:
            from megatron_gm.data.indexed import load_dataset_info

            have = load_dataset_info(cfg.data_path).fingerprint
            if have != fingerprint:
                raise ManifestMismatch(
                    f"{cfg.scores_from}: scores were made for dataset {fingerprint}, --data-path "
                    f"{cfg.data_path} is {have}; score this dataset or point to its scores"
                )
        num_docs = int(sman.config["num_docs"])
        alpha, tau = float(sman.config["alpha"]), float(sman.config["tau"])
        model_hash = sman.inputs.get("influence_model", "")
        iteration = sman.iteration
        source = cfg.scores_from
    else:
        from megatron_gm.data.indexed import load_dataset_info
        from megatron_gm.influence import load_influence_model
        from megatron_gm.selection.scoring import influence_model_hash

        info = load_dataset_info(cfg.data_path)
        fingerprint, num_docs = info.fingerprint, int(info.num_docs)
        if num_docs == 0:
            raise GMError(f"{cfg.data_path}: empty pool (0 documents); nothing to select from")
        model_hash = influence_model_hash(cfg.influence_model)
        model, mman = load_influence_model(
            cfg.influence_model, dataset_fingerprint=fingerprint, device=scoring_device(cfg)
        )
        model_box["model"] = model
        alpha, tau = model.alpha, model.tau
        iteration = mman.iteration
        source = cfg.data_path
    if num_docs == 0:
        raise GMError(f"{source}: empty pool (0 documents); nothing to select from")
    if not (math.isfinite(alpha) and math.isfinite(tau)) or tau == 0:
        raise GMError(f"{source}: influence model has alpha={alpha}, tau={tau}; retrain it")
    k = cfg.num_clusters or max(1, round(num_docs / DOCS_PER_CLUSTER))
    if k > num_docs:
        raise GMError(
            f"--gm-num-clusters {k} is more than the {num_docs} documents of {source}; use at most {num_docs}"
        )
    if cfg.scores_from is not None:
        scores = sman
    else:
        scores = scores_manifest(
            dataset_fingerprint=fingerprint,
            num_docs=num_docs,
            shard_size=cfg.shard_size,
            dim=model.hidden_size,
            alpha=alpha,
            tau=tau,
            model_hash=model_hash,
            iteration=iteration,
            extra={"batch_size": cfg.batch_size},
        )
        ShardSet(cfg.scores_folder, num_shards(num_docs, cfg.shard_size)).open(scores)
    embed = None
    if cfg.embed_cache and cfg.scores_from is None:
        from megatron_gm.influence.io import read_model_config
        from megatron_gm.selection.embed_cache import embed_cache_manifest, embed_cache_shards

        embed = embed_cache_manifest(
            model_config=read_model_config(cfg.influence_model),
            fingerprint=fingerprint,
            num_docs=num_docs,
            shard_size=cfg.shard_size,
            batch_size=cfg.batch_size,
            threads=cfg.threads,
            device=device_kind(model.device),
        )
        if embed is not None:
            embed_cache_shards(cfg.embed_cache, embed, num_shards(num_docs, cfg.shard_size)).open(embed)
    return Plan(fingerprint, num_docs, k, alpha, tau, model_hash, iteration, scores, embed)


# -- helpers ----------------------------------------------------------------------------------------------


def scoring_device(cfg: SelectConfig) -> str:
    """CPU (with ``cfg.threads`` torch threads), or with --device auto this rank's local GPU if any."""
    import torch

    torch.set_num_threads(cfg.threads)
    if cfg.device == "cpu" or not torch.cuda.is_available():
        return "cpu"
    local = os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK") or os.environ.get("SLURM_LOCALID") or "0"
    return f"cuda:{int(local) % torch.cuda.device_count()}"


def device_kind(device) -> str:
    """ "cpu", or the GPU's model name: what embeddings computed on ``device`` are comparable across."""
    import torch

    device = torch.device(device)
    return "cpu" if device.type == "cpu" else f"cuda:{torch.cuda.get_device_name(device)}"


def progress_bar(cfg: SelectConfig, comm: Comm, total: int, desc: str, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not (cfg.progress and comm.is_root), mininterval=2)


def read_rows(shards: ShardSet, cfg: dict, docs: np.ndarray, need_h: bool = True):
    """h and s of the given sorted document indices, read shard by shard."""
    num_docs, size = int(cfg["num_docs"]), int(cfg["shard_size"])
    h = np.empty((docs.size, int(cfg["dim"])), dtype=np.float32) if need_h else None
    s = np.empty(docs.size, dtype=np.float32)
    bounds = np.searchsorted(docs, [shard_range(i, num_docs, size)[0] for i in range(shards.num_shards + 1)])
    for i in range(shards.num_shards):
        a, b = int(bounds[i]), int(bounds[i + 1])
        if a == b:
            continue
        z = read_shard(shards, i, cfg)
        rows = docs[a:b] - i * size
        s[a:b] = z["s"][rows]
        if need_h:
            h[a:b] = z["h"][rows]
    return h, s


def deal_clusters(costs: np.ndarray, world: int) -> np.ndarray:
    """Owner rank of each cluster: largest cost first, to the least loaded rank (ties: lowest id/rank)."""
    owner = np.zeros(costs.size, dtype=np.int64)
    heap = [(0.0, r) for r in range(world)]
    for c in sorted(range(costs.size), key=lambda c: (-float(costs[c]), c)):
        load, r = heapq.heappop(heap)
        owner[c] = r
        heapq.heappush(heap, (load + float(costs[c]), r))
    return owner


# -- the run ----------------------------------------------------------------------------------------------


def run_selection(cfg: SelectConfig, comm: Comm) -> Summary:
    cfg.validate()
    clock = Clock()
    model_box: dict[str, Any] = {}
    if cfg.scores_from is None and not comm.is_root:
        preload_model(cfg, model_box)  # while rank 0 checks the inputs
    plan: Plan = comm.root_then_bcast(lambda: prepare(cfg, model_box))
    scfg = plan.scores.config
    shards = ShardSet(cfg.scores_folder, num_shards(plan.num_docs, int(scfg["shard_size"])))
    clock.lap("inputs")

    # 1. scoring
    scored = 0
    if cfg.scores_from is None:
        scored = score_phase(cfg, comm, plan, shards, model_box, clock)

    # 2. centroids on rank 0, broadcast

    def centroids() -> np.ndarray:
        sample = kmeans_sample(
            plan.num_docs, plan.num_clusters, cfg.draw_seed, cfg.kmeans_points_per_centroid
        )
        x, _ = read_rows(shards, scfg, sample)
        return train_centroids(
            x, plan.num_clusters, seed=cfg.draw_seed, niter=cfg.kmeans_iters, threads=cfg.threads
        )

    cents = comm.root_then_bcast(centroids)
    clock.lap("cluster")

    # 3. assignment, sharded
    mine = list(range(comm.rank, shards.num_shards, comm.size))
    parts = comm.agree(lambda: {i: assign(read_shard(shards, i, scfg)["h"], cents) for i in mine})
    merged: dict[int, np.ndarray] = {}
    for p in comm.allgather(parts) if comm.size > 1 else [parts]:
        merged.update(p)
    labels = np.concatenate([merged[i] for i in range(shards.num_shards)])
    clock.lap("assign")

    # 4. selection and gather
    sizes = np.bincount(labels, minlength=plan.num_clusters)
    quotas = cluster_quotas(sizes, cfg.ratio)
    budget = int(quotas.sum())
    if budget == 0:
        raise GMError(
            f"--gm-select-ratio {cfg.ratio} selects nothing: round(ratio * {plan.num_docs} documents) is 0; "
            "raise the ratio"
        )
    if cfg.method in PER_CLUSTER:
        chosen = comm.agree(lambda: select_my_clusters(cfg, comm, plan, shards, labels, sizes, quotas))
        gathered = comm.gather(chosen) if comm.size > 1 else [chosen]
    else:
        gathered = comm.agree(lambda: [select_global(cfg, plan, shards, budget)] if comm.is_root else None)
    clock.lap("select")

    # 5. one artifact, written by rank 0

    def write() -> int:
        docs = np.sort(np.concatenate(gathered))
        if docs.size != budget or np.any(docs[1:] == docs[:-1]):
            raise RuntimeError(
                f"selected {docs.size} documents (unique: {np.unique(docs).size}), expected {budget}"
            )
        write_artifact(cfg, plan, docs)
        return int(docs.size)

    selected = comm.root_then_bcast(write)
    clock.lap("write")
    total_scored = int(comm.allreduce_sum(scored)) if comm.size > 1 else scored
    cpu = {k: sum(c[k] for c in comm.allgather(clock.cpu)) for k in clock.cpu} if comm.size > 1 else clock.cpu
    return Summary(plan.num_docs, total_scored, plan.num_clusters, selected, clock.wall, cpu)


def preload_model(cfg: SelectConfig, model_box: dict) -> None:
    """Ranks > 0 load the model before rank 0's checks end; errors are raised later, collectively."""
    from megatron_gm.influence import load_influence_model

    try:
        model_box["model"], model_box["manifest"] = load_influence_model(
            cfg.influence_model, device=scoring_device(cfg)
        )
    except GMError as e:
        model_box["error"] = e


def score_phase(cfg, comm: Comm, plan: Plan, shards: ShardSet, model_box: dict, clock: Clock) -> int:
    """Score this rank's share of the unfinished shards; returns the number of documents scored."""
    from megatron_gm.selection.embed_cache import embed_cache_shards
    from megatron_gm.selection.scoring import score_shards

    cache = None
    if plan.embed is not None:
        cache = embed_cache_shards(cfg.embed_cache, plan.embed, shards.num_shards)

    def setup():
        if not comm.is_root:
            if "error" in model_box:
                raise model_box["error"]
            model_box["manifest"].check(path=cfg.influence_model, dataset_fingerprint=plan.fingerprint)
            shards.open(plan.scores)

    comm.agree(setup)
    pending = comm.root_then_bcast(lambda: [i for i in range(shards.num_shards) if not shards.is_done(i)])
    clock.lap("load")  # ranks > 0: model loading; timed apart so docs/s is scoring alone
    todo = pending[comm.rank :: comm.size]
    todo_docs = sum(hi - lo for lo, hi in (shard_range(i, plan.num_docs, cfg.shard_size) for i in todo))
    bar = progress_bar(cfg, comm, todo_docs, f"scoring (rank 0 of {comm.size})", "doc")
    try:
        scored = comm.agree(
            lambda: score_shards(
                shards,
                todo,
                model=model_box["model"],
                data_path=cfg.data_path,
                num_docs=plan.num_docs,
                shard_size=cfg.shard_size,
                batch_size=cfg.batch_size,
                on_shard=bar.update,
                embed_cache=cache,
            )
        )
    finally:
        bar.close()
    clock.lap("score")
    return scored


def select_my_clusters(cfg, comm, plan, shards, labels, sizes, quotas) -> np.ndarray:
    """Select inside the clusters dealt to this rank; returns the chosen document indices."""
    costs = sizes * (quotas + 1) if cfg.method == "group" else sizes.copy()
    owner = deal_clusters(costs.astype(np.float64), comm.size)
    docs = np.flatnonzero(owner[labels] == comm.rank)
    h, s = read_rows(shards, plan.scores.config, docs, need_h=cfg.method == "group")
    order = np.argsort(labels[docs], kind="stable")  # by cluster, document order inside
    bounds = np.searchsorted(labels[docs][order], np.arange(plan.num_clusters + 1))
    out = []
    mine = np.flatnonzero(owner == comm.rank)
    bar = progress_bar(cfg, comm, int(sizes[mine].sum()), f"selecting (rank 0 of {comm.size})", "doc")
    for c in mine:
        rows = order[bounds[c] : bounds[c + 1]]
        if quotas[c]:
            hc = h[rows] if h is not None else None
            pos = select_in_cluster(cfg.method, hc, s[rows], plan.alpha, plan.tau, int(quotas[c]))
            out.append(docs[rows[pos]])
        bar.update(int(sizes[c]))
    bar.close()
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def select_global(cfg: SelectConfig, plan: Plan, shards: ShardSet, budget: int) -> np.ndarray:
    if cfg.method == "random":
        return select_random(plan.num_docs, budget, cfg.draw_seed)
    _, s = read_rows(shards, plan.scores.config, np.arange(plan.num_docs), need_h=False)
    return select_individual(s, budget, cfg.temperature, cfg.draw_seed)


def selection_manifest(cfg: SelectConfig, plan: Plan, num_selected: int) -> Manifest:
    config = {
        "method": cfg.method,
        "ratio": cfg.ratio,
        "num_clusters": plan.num_clusters,
        "kmeans_iters": cfg.kmeans_iters,
        "kmeans_points_per_centroid": cfg.kmeans_points_per_centroid,
        "alpha": plan.alpha,
        "tau": plan.tau,
        "num_docs": plan.num_docs,
        "num_selected": num_selected,
    }
    if cfg.method == "individual":
        config["temperature"] = cfg.temperature
    return Manifest(
        kind="selection",
        dataset_fingerprint=plan.fingerprint,
        stage=cfg.stage,
        iteration=plan.iteration,
        seed=cfg.seed,
        config=config,
        inputs={"influence_model": plan.model_hash, "scores": plan.scores.digest()},
    )


def write_artifact(cfg: SelectConfig, plan: Plan, docs: np.ndarray) -> Path:
    """Write next to the output and swap it in: an error leaves any existing output untouched."""
    check_output(cfg)
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_folder(out, lambda tmp: save_selection(tmp, docs, selection_manifest(cfg, plan, int(docs.size))))
    return out
