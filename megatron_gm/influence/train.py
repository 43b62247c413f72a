"""Train the relational data influence model under DeepSpeed (METHOD.md step 2).

Loss: MSE between the group prediction and the z-scored oracle labels (mean/std over all positions of the
training split). A held-out split of trajectories (default min(1,000, 5 %)) is scored by Spearman
correlation over all its positions; the model with the best validation Spearman is kept.

Modes:
- ``full`` (the paper): the encoder is fine-tuned together with w, b, α, τ; every step embeds the B·T
  documents of its trajectories.
- ``fast``: the encoder is frozen; every pool document of the stores is embedded once (cached on disk,
  resumable, split across ranks) and only w, b, α, τ are trained. It gives up influence-aware embeddings:
  h and the relation R_ij = <h_i, h_j> stay generic semantic similarity, the individual score is a linear
  probe of frozen features, and selection's clusters are plain semantic clusters (the paper reports that
  learned h clusters beat semantic ones). Costs minutes on a CPU instead of hours.

Data parallelism: a global batch of ``train_batch_size`` trajectories is cut into
gradient-accumulation micro-batches of ``micro × world`` and each rank takes its slice, so one process
with accumulation and several processes without follow the same trajectory order and the same gradients
(up to float summation order). Checkpoints (DeepSpeed's, with our loop state as client state) are written
at every evaluation; a rerun with the same arguments resumes from the latest one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from megatron_gm.errors import GMError
from megatron_gm.fs import sha256_text
from megatron_gm.influence import dist as gdist
from megatron_gm.influence.data import (
    TrajectoryData,
    default_val_count,
    load_stores,
    split_indices,
    zscore_stats,
)
from megatron_gm.influence.embed_cache import cached_embeddings
from megatron_gm.influence.io import warm_start_encoder
from megatron_gm.influence.model import (
    InfluenceModel,
    ModelConfig,
    check_encoder_path,
    default_encoder_path,
    encoder_hash,
)
from megatron_gm.influence.train_config import TrainConfig
from megatron_gm.influence.trainer import Prepared, Run

# -- the whole job -------------------------------------------------------------------------------------


def prepare(
    cfg: TrainConfig,
    rank: int,
    world: int,
    need_texts: bool,
    need_embeddings: bool,
    model_config: ModelConfig,
) -> Prepared:
    """Load and check every input (before anything is written), then decode texts / embed documents."""
    from megatron_gm.data.documents import document_texts
    from megatron_gm.data.indexed import load_dataset_info

    check_encoder_path(model_config.encoder_path)
    info = load_dataset_info(cfg.data_path)
    data = load_stores(cfg.oracle, info.fingerprint, info.num_docs)
    val_count = cfg.val_count or default_val_count(len(data))
    train_idx, val_idx = split_indices(len(data), val_count, cfg.seed)
    mean, std = zscore_stats(data.labels[train_idx])
    y = ((data.labels.astype(np.float64) - mean) / std).astype(np.float32)
    unique_docs = np.unique(data.documents)
    prep = Prepared(data, info.fingerprint, train_idx, val_idx, y, mean, std, unique_docs)
    check_output(cfg, rank)
    if need_texts:
        prep.texts = dict(
            zip(
                unique_docs.tolist(),
                document_texts(cfg.data_path, unique_docs),
                strict=True,
            )
        )
    if need_embeddings:
        torch.manual_seed(cfg.seed)
        frozen = InfluenceModel(model_config).to(gdist.device())
        prep.embeddings = cached_embeddings(
            encoder_hash(frozen.config.encoder_path),
            frozen,
            cfg.data_path,
            unique_docs,
            train_dir(cfg),
            cfg.embed_batch_size,
            info.fingerprint,
            cfg.progress and rank == 0,
        )
        del frozen
    return prep


def run_id(cfg: TrainConfig, data: TrajectoryData | None = None) -> str:
    """What must not change between a run and its resume."""
    d = dataclasses.asdict(cfg)
    for k in ("output", "progress", "max_steps", "ablation", "train_dir"):
        d.pop(k)
    return sha256_text(json.dumps(d, sort_keys=True))[:16]


def train_dir(cfg: TrainConfig) -> Path:
    """Training state (checkpoints, embedding cache, best-so-far): beside the model folder, not in it, so the
    published model folder holds only the model."""
    return Path(cfg.train_dir) if cfg.train_dir else Path(f"{str(cfg.output).rstrip('/')}_train")


def check_output(cfg: TrainConfig, rank: int) -> Path:
    out = Path(cfg.output)
    stamp = train_dir(cfg) / "run.json"
    want = {"run_id": run_id(cfg), "config": dataclasses.asdict(cfg)}
    if stamp.exists():
        have = json.loads(stamp.read_text())
        if have.get("run_id") != want["run_id"]:
            raise GMError(
                f"{stamp.parent}: holds a training run with other arguments (see {stamp}); "
                "use a new --output or delete it"
            )
    elif out.exists() and any(out.iterdir()):
        raise GMError(f"{out}: exists and was not written by this training run; use a new --output")
    gdist.barrier()
    if rank == 0:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps(want, indent=2, sort_keys=True) + "\n")
    gdist.barrier()
    return out


def train_influence_model(cfg: TrainConfig) -> dict:
    """Train (and resume) the model, the ablation without the relation term, and write the final model."""
    cfg.validate()
    rank, world = gdist.init_distributed()
    out = Path(cfg.output)
    if cfg.init_from and not cfg.encoder:
        cfg = dataclasses.replace(cfg, encoder=warm_start_encoder(cfg.init_from))
    model_config = ModelConfig(
        cfg.encoder or default_encoder_path(),
        cfg.chunk_len,
        cfg.max_chunks,
        cfg.relation,
    )
    model_config.validate()
    abl_mode = {"same": cfg.mode, "fast": "fast", "none": None}[cfg.ablation]
    need_texts = cfg.mode == "full" or abl_mode == "full"
    need_emb = cfg.mode == "fast" or abl_mode == "fast"
    t0 = time.perf_counter()
    prep = prepare(cfg, rank, world, need_texts, need_emb, model_config)
    prep_seconds = time.perf_counter() - t0
    result = {
        "prepare_seconds": prep_seconds,
        "label_mean": prep.label_mean,
        "label_std": prep.label_std,
        "train_trajectories": len(prep.train_idx),
        "val_trajectories": len(prep.val_idx),
        "T": prep.data.T,
    }
    result["main"] = Run(cfg, prep, cfg.mode, cfg.relation, train_dir(cfg) / "main", rank, world).fit(
        model_config
    )
    if abl_mode is not None and cfg.relation:
        result["ablation"] = Run(
            cfg,
            prep,
            abl_mode,
            False,
            train_dir(cfg) / f"ablation-{abl_mode}",
            rank,
            world,
        ).fit(model_config)
    if rank == 0:
        publish(out, train_dir(cfg) / "main" / "best", result)
    gdist.barrier()
    return result


def publish(out: Path, best: Path, result: dict) -> None:
    """Copy the best model's files into the output folder (manifest last) and write metrics.json."""
    from megatron_gm.fs import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # the folder is incomplete until the manifest is back
    for item in sorted(best.iterdir()):
        if item.name in ("manifest.json", "metrics.json"):
            continue
        dest = out / item.name
        if item.is_dir():
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(item, dest)
        else:
            shutil.copy2(item, dest)
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
    shutil.copy2(best / "manifest.json", out / ".manifest.json.tmp")
    os.replace(out / ".manifest.json.tmp", out / "manifest.json")


def summary(result: dict) -> str:
    m = result["main"]
    b = m["best"]
    secs = list(m["epoch_seconds"].values())
    lines = [
        f"trajectories: {result['train_trajectories']} train, {result['val_trajectories']} validation, T={result['T']}",
        (
            f"model ({m['mode']}, relation on): val spearman {b['spearman']:.4f}  val mse {b['mse']:.4f}  "
            f"alpha {b['alpha']:.4f}  tau {b['tau']:.4f}  (best at step {b['step']} of {m['steps']})"
        ),
    ]
    if secs:
        per_epoch = sum(secs) / max(1, m["steps"]) * m["steps_per_epoch"]
        lines.append(
            f"train time per epoch: {per_epoch:.1f} s ({m['steps_per_epoch']} steps/epoch, "
            f"{m['world_size']} process(es), ZeRO stage {m['deepspeed']['zero_stage']})"
        )
    if "ablation" in result:
        a = result["ablation"]["best"]
        lines.append(
            f"ablation ({result['ablation']['mode']}, no relation term): val spearman {a['spearman']:.4f}  "
            f"val mse {a['mse']:.4f}  -> relation term adds {b['spearman'] - a['spearman']:+.4f} spearman"
        )
    return "\n".join(lines)
