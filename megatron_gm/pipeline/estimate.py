"""A rough FLOPs and wall-time estimate per phase, printed by the dry-run before anything is submitted.

FLOPs (forward + backward = 3x forward):
- pretrain: 6·N·D + 12·L·s·h·D for D tokens (Kaplan et al.; attention counted dense), plus evaluation.
- oracle: per trajectory T one-sequence training steps and T+1 reference-set evaluations (2·N per token;
  the reference set is packed into seq-length samples).
- bootstrap: encoder forward over the searched documents, plus the beam search (2·d per candidate).
- influence: encoder forward over the trajectories' documents (fast mode: once; full: every epoch, x3).
- select: encoder forward over the whole pool (none after the first round with a frozen encoder and
  the embedding cache), plus k-means (2·n·k·d per iteration) and the greedy pick.

Time = FLOPs / (devices x sustained FLOP/s) + a fixed start-up per job. The sustained rates are guesses:
on CPU calibrated on this project's 2-core quickstart (tiny models are overhead-bound), on GPU an
H100 in bf16 at a typical utilisation. Treat the numbers as orders of magnitude.
"""

from __future__ import annotations

import dataclasses

from megatron_gm.pipeline.config import PipelineConfig
from megatron_gm.pipeline.plan import Phase

ENCODER_PARAMS = 22_700_000  # all-MiniLM-L6-v2 (the bundled encoder); bge-base is ~110M


@dataclasses.dataclass
class Hardware:
    name: str
    flops_lm: float  # sustained FLOP/s per GPU (per CPU thread), GPT training
    flops_probe: float  # oracle probing (batch of one sequence: poor utilisation)
    flops_encoder: float  # encoder inference / training
    startup_s: dict[str, float]


CPU = Hardware(
    "CPU (per thread; calibrated on the tiny quickstart on 2 idle cores; a busy machine is several times "
    "slower)", 2.5e10, 1.7e10, 1.8e11,
    {"pretrain": 15.0, "oracle": 15.0, "influence": 25.0, "bootstrap": 20.0, "select": 10.0},
)  # fmt: skip
H100 = Hardware(
    "GPU (H100 bf16: 35% MFU training, 10% probing, 30% encoder)", 0.35 * 989e12, 0.10 * 989e12,
    0.30 * 989e12, {"pretrain": 120.0, "oracle": 120.0, "influence": 90.0, "bootstrap": 60.0, "select": 90.0},
)  # fmt: skip


@dataclasses.dataclass
class PoolStats:
    num_docs: int
    num_tokens: int
    measured: bool  # False: assumed (no dataset sidecar to read)


def pool_stats(cfg: PipelineConfig) -> PoolStats:
    try:
        from megatron_gm.data.indexed import load_dataset_info

        info = load_dataset_info(cfg.data_path)
        return PoolStats(int(info.num_docs), int(info.num_tokens), True)
    except Exception:  # a dry-run must work before the data exists
        return PoolStats(20_000, 7_000_000, False)


@dataclasses.dataclass
class Estimate:
    phase: str
    flops: float
    seconds: float
    note: str


def _lm_flops_per_token(cfg: PipelineConfig, train: bool) -> float:
    m = cfg.model
    fwd = 2 * m.params() + 4 * m.num_layers * m.seq_length * m.hidden_size
    return 3 * fwd if train else fwd


def estimate_phase(cfg: PipelineConfig, phase: Phase, pool: PoolStats, hw: Hardware) -> Estimate:
    m, t, o, i, s = cfg.model, cfg.train, cfg.oracle, cfg.influence, cfg.select
    devices = max(1, phase.world_size) * (phase.threads if hw is CPU else 1)
    doc_tokens = pool.num_tokens / max(1, pool.num_docs)
    enc_tokens_per_doc = min(doc_tokens, (i.chunk_len or 256) * (i.max_chunks or 64))
    if phase.kind == "pretrain":
        tokens = t.stage_iters * t.global_batch_size * m.seq_length
        evals = (
            (t.stage_iters // max(1, t.eval_interval) + 1) * t.eval_iters * t.global_batch_size * m.seq_length
        )
        flops = tokens * _lm_flops_per_token(cfg, True) + evals * _lm_flops_per_token(cfg, False)
        rate, note = hw.flops_lm, f"{tokens / 1e6:.2f}M tokens"
    elif phase.kind == "oracle":
        n = 2 * o.bootstrap_beams if phase.name.endswith("_bootstrap") else o.trajectories
        step = m.seq_length * _lm_flops_per_token(cfg, True)
        ref = o.ref_max_examples * m.seq_length * _lm_flops_per_token(cfg, False)
        flops = n * (o.traj_len * step + (o.traj_len + 1) * ref)
        rate, note = hw.flops_probe, f"{n} trajectories x T={o.traj_len}"
    elif phase.kind == "bootstrap":
        probe = o.bootstrap_probe_count or pool.num_docs
        embed = probe * enc_tokens_per_doc * 2 * ENCODER_PARAMS
        search = 2 * o.traj_len * o.bootstrap_beams * o.bootstrap_width * probe * 384 * 2
        flops = embed + search
        rate, note = hw.flops_encoder, f"{probe} documents searched, 2 x {o.bootstrap_beams} beams"
    elif phase.kind == "influence":
        n = o.trajectories + (2 * o.bootstrap_beams if phase.name.endswith("_bootstrap") else 0)
        docs = min(pool.num_docs, n * o.traj_len)
        fwd = docs * enc_tokens_per_doc * 2 * ENCODER_PARAMS
        epochs = 1 if i.mode == "fast" else 3 * (i.epochs or 5)
        flops = fwd * epochs
        rate, note = hw.flops_encoder, f"{i.mode} mode, {docs} documents to embed"
    else:
        if phase.branch == "random":
            return Estimate(phase.name, 0.0, hw.startup_s["select"], "random pick from the main scores")
        k = s.num_clusters or max(1, round(pool.num_docs / 3000))
        d = 384
        embed = pool.num_docs * enc_tokens_per_doc * 2 * ENCODER_PARAMS
        cached = i.mode == "fast" and s.embed_cache != "none" and phase.stage > 1
        if cached:  # a frozen encoder's pool embeddings come from the first round's cache
            embed = 0.0
        kmeans = s.kmeans_iters * min(pool.num_docs, 256 * k) * k * d * 2 + pool.num_docs * k * d * 2
        greedy = pool.num_docs * (pool.num_docs / k) * s.ratio * d * 2
        flops = embed + kmeans + greedy
        rate = hw.flops_encoder
        note = f"{pool.num_docs} documents{' (cached embeddings)' if cached else ''}, {k} clusters"
    seconds = flops / (rate * devices) + hw.startup_s[phase.kind]
    return Estimate(phase.name, flops, seconds, note)


def estimate_plan(cfg: PipelineConfig, phases: list[Phase]) -> tuple[list[Estimate], Hardware, PoolStats]:
    hw = H100 if cfg.launch.gpus_per_node > 0 else CPU
    pool = pool_stats(cfg)
    return [estimate_phase(cfg, p, pool, hw) for p in phases], hw, pool


def human_flops(f: float) -> str:
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if f >= scale:
            return f"{f / scale:.1f} {unit}FLOP"
    return f"{f:.0f} FLOP"


def human_time(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"
