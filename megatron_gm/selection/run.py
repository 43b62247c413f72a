"""The selection run across ranks: score, cluster, assign, select, gather, write (docs/method.md step 4).

Every phase's result is independent of the number of ranks: shards have fixed boundaries, centroids are
trained on rank 0 only (seeded sample, fixed threads), a cluster's selection only depends on its own
documents (in document order), and rank 0 sorts the gathered indices. So 1, 2 or 4 ranks write the same
artifact bytes. The scores folder (``--scores-dir``) must be on a file system every rank sees.
"""

from __future__ import annotations

import heapq
import math
from pathlib import Path

import numpy as np

from megatron_gm.data.selection import save_selection
from megatron_gm.errors import GMError, ManifestMismatch
from megatron_gm.fs import write_folder
from megatron_gm.manifest import Manifest
from megatron_gm.selection.cluster import assign, kmeans_sample, train_centroids
from megatron_gm.selection.comm import Comm
from megatron_gm.selection.config import DOCS_PER_CLUSTER, Clock, Plan, SelectConfig, Summary
from megatron_gm.selection.methods import (
    PER_CLUSTER,
    cluster_quotas,
    select_in_cluster,
    select_individual,
    select_random,
)
from megatron_gm.selection.score_store import (
    num_shards,
    open_scores,
    read_shard,
    scores_manifest,
    shard_range,
)
from megatron_gm.selection.scoring import (
    ScoringModel,
    influence_model_hash,
    progress_bar,
    score_phase,
    scoring_device,
)
from megatron_gm.shards import ShardSet

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


def prepare(cfg: SelectConfig, held: ScoringModel) -> Plan:
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

        info = load_dataset_info(cfg.data_path)
        fingerprint, num_docs = info.fingerprint, int(info.num_docs)
        if num_docs == 0:
            raise GMError(f"{cfg.data_path}: empty pool (0 documents); nothing to select from")
        model_hash = influence_model_hash(cfg.influence_model)
        model, mman = load_influence_model(
            cfg.influence_model, dataset_fingerprint=fingerprint, device=scoring_device(cfg)
        )
        held.model = model
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
        from megatron_gm.influence.embed_cache import device_kind, pool_embed_cache
        from megatron_gm.influence.io import read_model_config

        cache = pool_embed_cache(
            cfg.embed_cache,
            model_config=read_model_config(cfg.influence_model),
            fingerprint=fingerprint,
            num_docs=num_docs,
            shard_size=cfg.shard_size,
            batch_size=cfg.batch_size,
            threads=cfg.threads,
            device=device_kind(model.device),
        )
        if cache is not None:
            embed, folder = cache
            folder.open(embed)
    return Plan(fingerprint, num_docs, k, alpha, tau, model_hash, iteration, scores, embed)


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
    held = ScoringModel()
    if cfg.scores_from is None and not comm.is_root:
        held.preload(cfg)  # while rank 0 checks the inputs
    plan: Plan = comm.root_then_bcast(lambda: prepare(cfg, held))
    scfg = plan.scores.config
    shards = ShardSet(cfg.scores_folder, num_shards(plan.num_docs, int(scfg["shard_size"])))
    clock.lap("inputs")

    # 1. scoring
    scored = 0
    if cfg.scores_from is None:
        scored = score_phase(cfg, comm, plan, shards, held, clock)

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
