"""Bootstrap round (docs/method.md step 3): beam-search trajectories of extreme predicted group influence.

The group influence of a trajectory x_0..x_{T-1} is Σ_t Î_t with the model's own prediction (step 0 uses
s(x_0), as the model does; the reference code scored every first pick 0). Beam search: every beam is
extended by its ``width`` best next documents (lowest Î_t for the low tail, highest for the high tail), and
of all extensions the ``beams`` best by running total are kept. The search state per beam is the sum of
its embeddings, so a step costs beams × pool × d and no [beams, pool] relation table is kept.

The result is a trajectory file that ``tools/collect_oracle.py`` probes: a folder with

    documents.npy        int64 [n, T]  document indices into the pool dataset, in step order
    predicted.npy        float32 [n]   predicted group influence (z-scored label units)
    tail.npy             int8 [n]      -1 = searched for lowest, +1 = for highest
    probe_documents.npy  int64 [m]     the probing pool that was searched
    manifest.json        kind "trajectories" (written last: a folder with a manifest is complete)

The probing pool's h: with ``--embed-cache`` (the selection's pool-embedding cache) and a frozen encoder,
the documents whose pool shard an earlier selection finished are read from it, and only the others are
embedded. The cache folder is keyed by the batch size, threads and device of the run that filled it
(``embed_cache.pool_embed_cache``), and the bootstrap looks it up under its own (``--embed-batch-size``,
``--threads``, its device), so the cached vectors come from the selection's batch shape and threads and
are found only when those equal the bootstrap's: then they are the bits the bootstrap would compute (h
depends on a document, the encoder and the batch size, not on the batch's other documents:
``influence/embed.py``), and the trajectories are the same as without the cache. The shard size is part
of the key too: ``--embed-cache-shard-size`` must be the selection's ``--shard-size`` (both default 1000).
Another encoder, batch size, thread count, device or shard size is another folder: a miss, and the whole
probing pool is embedded as without the cache. A fine-tuned model never reads it.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import torch

from megatron_gm.config import check_settings, setting
from megatron_gm.dist import get_logger
from megatron_gm.errors import GMError
from megatron_gm.manifest import Manifest
from megatron_gm.oracle.trajectories import TRAJ_KIND, load_trajectories, save_trajectories

log = get_logger(__name__)


def beam_search(
    h: np.ndarray,
    s: np.ndarray,
    alpha: float,
    tau: float,
    T: int,
    width: int,
    beams: int,
    *,
    lowest: bool = True,
    relation: bool = True,
    chunk: int = 1024,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Trajectories [k, T] (indices into h) and their predicted group influence [k], best first."""
    n, _ = h.shape
    if not 1 <= T <= n:
        raise GMError(f"trajectory length T={T} must be between 1 and the probing pool size {n}")
    if width < 1 or beams < 1:
        raise GMError(f"beam width ({width}) and beams per tail ({beams}) must be >= 1")
    dtype = torch.float64 if torch.device(device).type == "cpu" else torch.float32
    H = torch.as_tensor(h, dtype=dtype, device=device)
    S = torch.as_tensor(s, dtype=dtype, device=device)
    sign = 1.0 if lowest else -1.0  # search minimises sign * influence
    seqs = torch.zeros((1, 0), dtype=torch.long, device=device)
    hsum = torch.zeros((1, H.shape[1]), dtype=dtype, device=device)
    total = torch.zeros(1, dtype=dtype, device=device)
    k = min(width, n)
    for t in range(T):
        child_parent, child_doc, child_total = [], [], []
        for st in range(0, len(seqs), chunk):
            sl = slice(st, st + chunk)
            if t == 0 or not relation:
                step = S.expand(len(seqs[sl]), n).clone()
            else:  # Î_t = s(x) · α · (1/t) Σ_{j<t} (1 − <h_j, h_x>/τ) = s(x) · α · (t − <Σ_j h_j, h_x>/τ) / t
                step = S[None, :] * alpha * (t - hsum[sl] @ H.T / tau) / t
            key = sign * step
            if t:
                key.scatter_(1, seqs[sl], float("inf"))  # no document twice in a trajectory
            kk = min(k, n - t)
            best = _topk_smallest(key, kk)  # [b, kk], ties broken by document index
            parent = torch.arange(st, st + len(best), device=device)[:, None].expand(-1, kk)
            child_parent.append(parent.reshape(-1))
            child_doc.append(best.reshape(-1))
            child_total.append((total[sl][:, None] + step.gather(1, best)).reshape(-1))
        parent = torch.cat(child_parent)
        doc = torch.cat(child_doc)
        tot = torch.cat(child_total)
        keep = _topk_smallest((sign * tot)[None, :], min(beams, len(tot)))[0]
        parent, doc = parent[keep], doc[keep]
        seqs = torch.cat([seqs[parent], doc[:, None]], dim=1)
        hsum = hsum[parent] + H[doc]
        total = tot[keep]
    return seqs.cpu().numpy().astype(np.int64), total.cpu().numpy().astype(np.float64)


def _topk_smallest(key: torch.Tensor, k: int) -> torch.Tensor:
    """Column indices of the k smallest entries per row, sorted ascending, ties by lower index."""
    vals, idx = torch.topk(key, k, dim=1, largest=False, sorted=True)
    # make ties deterministic: stable sort by (value, index)
    order = torch.argsort(idx, dim=1, stable=True)
    idx, vals = idx.gather(1, order), vals.gather(1, order)
    order = torch.argsort(vals, dim=1, stable=True)
    return idx.gather(1, order)


def group_influence(h: np.ndarray, s: np.ndarray, alpha: float, tau: float, traj: np.ndarray, relation=True):
    """Σ_t Î_t for trajectories [k, T] of indices into h/s, with the model's formula (float64)."""
    from megatron_gm.influence.model import group_prediction

    H = torch.as_tensor(h, dtype=torch.float64)[torch.as_tensor(traj)]
    S = torch.as_tensor(s, dtype=torch.float64)[torch.as_tensor(traj)]
    a = torch.tensor([alpha], dtype=torch.float64)
    tt = torch.tensor([tau], dtype=torch.float64)
    return group_prediction(H, S, a, tt, relation).sum(dim=1).numpy()


# -- the bootstrap job -------------------------------------------------------------------------------------


@dataclasses.dataclass
class BootstrapConfig:
    """The beam search's settings; each field is the flag ``--<field>`` of bootstrap_trajectories.py."""

    model: str = setting(help="influence model folder (tools/train_influence_model.py)")
    data_path: str = setting(help="Megatron data prefix of the candidate pool")
    output: str = setting(help="trajectory folder to write")
    T: int = setting(10, "trajectory length (documents per trajectory)", low=1)
    width: int = setting(5, "beam width: extensions kept per beam and step", low=1)
    beams_per_tail: int = setting(10000, "beams kept per step = trajectories per tail", low=1)
    tails: str = setting(
        "both", "search the lowest, the highest or both tails", choices=("both", "low", "high")
    )
    probe_count: int = setting(20000, "random pool documents to search (0: all)", low=0)
    probe_indices: str = setting("", ".npy of document indices to search instead")
    seed: int = setting(1234, "probing-pool sample seed")
    embed_batch_size: int = setting(32, "chunks per encoder call when embedding", low=1)
    embed_cache: str = setting(
        "", "the selection's pool-embedding cache folder (tools/select_data.py --embed-cache): with a frozen "
        "encoder, read the probing pool's h from its finished shards (a fine-tuned model ignores it)",
    )  # fmt: skip
    embed_cache_shard_size: int = setting(
        1000, "the selection's --shard-size (the cache's shards: contiguous documents of the pool)", low=1
    )
    progress: bool = setting(True, "no progress bars", flag="--no-progress")

    def validate(self) -> BootstrapConfig:
        check_settings(self)
        return self


def probing_pool(cfg: BootstrapConfig, num_docs: int) -> np.ndarray:
    if cfg.probe_indices:
        try:
            idx = np.load(cfg.probe_indices, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise GMError(f"{cfg.probe_indices}: unreadable ({e}); pass a .npy of document indices") from e
        idx = np.unique(np.asarray(idx, dtype=np.int64).reshape(-1))
        if idx.size == 0 or idx[0] < 0 or idx[-1] >= num_docs:
            raise GMError(f"{cfg.probe_indices}: empty or out of range for a dataset of {num_docs} documents")
        return idx
    if cfg.probe_count == 0 or cfg.probe_count >= num_docs:
        return np.arange(num_docs, dtype=np.int64)
    return np.sort(np.random.default_rng(cfg.seed).choice(num_docs, cfg.probe_count, replace=False))


def run_bootstrap(cfg: BootstrapConfig) -> dict:
    """Embed the probing pool with the trained model, beam-search both tails, write the trajectory file."""
    from megatron_gm.data.indexed import load_dataset_info
    from megatron_gm.influence.embed import individual_scores
    from megatron_gm.influence.embed_cache import cached_embeddings
    from megatron_gm.influence.io import load_influence_model, read_model_config

    cfg.validate()
    info = load_dataset_info(cfg.data_path)
    model, model_manifest = load_influence_model(cfg.model, dataset_fingerprint=info.fingerprint)
    probe = probing_pool(cfg, info.num_docs)
    if cfg.T > len(probe):
        raise GMError(
            f"T={cfg.T} is longer than the probing pool ({len(probe)} documents); raise --probe-count"
        )
    tails = {"both": (True, False), "low": (True,), "high": (False,)}[cfg.tails]
    manifest = Manifest(
        TRAJ_KIND,
        info.fingerprint,
        stage=model_manifest.stage,
        iteration=model_manifest.iteration,
        seed=cfg.seed,
        config={
            "policy": "bootstrap",
            "width": cfg.width,
            "beams_per_tail": cfg.beams_per_tail,
            "tails": cfg.tails,
            "probe_count": int(len(probe)),
            "alpha": model.alpha,
            "tau": model.tau,
            "relation": bool(model.heads.relation),
        },
        inputs={"influence_model": model_manifest.digest()},
    )
    out = Path(cfg.output)
    if (out / "manifest.json").exists():
        old = Manifest.load(out / "manifest.json")
        old_cfg = {k: v for k, v in old.config.items() if k not in ("T", "num_trajectories")}
        if old.inputs == manifest.inputs and old_cfg == manifest.config and old.config.get("T") == cfg.T:
            docs, _ = load_trajectories(out)
            return {"output": str(out), "trajectories": len(docs), "reused": True}
        raise GMError(f"{out}: holds trajectories of another run; use a new --output or delete it")
    model_config = read_model_config(cfg.model)
    h, found = probe_from_pool_cache(cfg, model, model_config, info.fingerprint, info.num_docs, probe)
    if not found.all():
        h[~found] = cached_embeddings(
            model_config["encoder_sha256"],
            model,
            cfg.data_path,
            probe[~found],
            out / "cache",
            cfg.embed_batch_size,
            info.fingerprint,
            cfg.progress,
        )
    s = individual_scores(model, h)
    docs, scores, tail = [], [], []
    for lowest in tails:
        traj, score = beam_search(
            h,
            s,
            model.alpha,
            model.tau,
            cfg.T,
            cfg.width,
            cfg.beams_per_tail,
            lowest=lowest,
            relation=bool(model.heads.relation),
        )
        docs.append(probe[traj])
        scores.append(score)
        tail.append(np.full(len(traj), -1 if lowest else 1, dtype=np.int8))
    save_trajectories(
        out,
        np.concatenate(docs),
        manifest,
        predicted=np.concatenate(scores),
        tail=np.concatenate(tail),
        probe_documents=probe,
    )
    shutil.rmtree(out / "cache", ignore_errors=True)
    return {
        "output": str(out),
        "trajectories": int(sum(len(d) for d in docs)),
        "predicted": {
            ("low" if lo else "high"): [float(sc.min()), float(sc.max())] for lo, sc in zip(tails, scores)
        },
        "probe_count": int(len(probe)),
        "probe_from_cache": int(found.sum()),
        "probe_embedded": int((~found).sum()),
        "reused": False,
    }


def probe_from_pool_cache(
    cfg: BootstrapConfig, model, model_config: dict, fingerprint: str, num_docs: int, probe: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """h [len(probe), d] float32 of the probe documents found in ``cfg.embed_cache`` and the mask of those
    found (all False without a cache, for a fine-tuned model, or when no selection filled the folder for
    this encoder, batch size, threads and device). Logs how many came from the cache."""
    from megatron_gm.influence.embed_cache import device_kind, pool_embed_cache, pool_h

    def none() -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((len(probe), model.hidden_size), dtype=np.float32), np.zeros(len(probe), dtype=bool)

    if not cfg.embed_cache:
        return none()
    cache = pool_embed_cache(
        cfg.embed_cache,
        model_config=model_config,
        fingerprint=fingerprint,
        num_docs=num_docs,
        shard_size=cfg.embed_cache_shard_size,
        batch_size=cfg.embed_batch_size,
        threads=torch.get_num_threads(),
        device=device_kind(model.device),
    )
    if cache is None:
        log.info(
            "bootstrap: the model's encoder is fine-tuned; --embed-cache ignored, embedding the probing pool"
        )
        return none()
    _, shards = cache
    h, found = pool_h(shards, num_docs, cfg.embed_cache_shard_size, probe, model.hidden_size)
    log.info(
        f"bootstrap: {int(found.sum())} of {len(probe)} probe documents from the pool-embedding cache "
        f"{shards.folder}, {int((~found).sum())} to embed"
    )
    return h, found
