"""FLOPs and wall time per phase, printed by the dry-run before anything is submitted.

FLOPs (forward + backward = 3x forward; per token 2·N + 4·L·s·h forward, attention counted dense):
- pretrain: the stage's tokens, plus its evaluation.
- oracle: per trajectory T one-sequence training steps and T reference passes (plus one for the
  checkpoint's own loss, shared by all trajectories). The reference pass
  costs the reference set's evaluated tokens: examples at their own length (the natural layout), or
  seq-length windows (packed). A later round probes ``oracle.later_round_fraction`` of the trajectories.
- bootstrap: encoder forward over the searched documents (``bootstrap.probe_count``, 0 = the
  whole pool), plus the beam search (2·d per beam and candidate, T steps, two tails). A later round's
  bootstrap reads the searched documents' embeddings from the selection's pool cache when the round's
  selection already filled it with the same frozen encoder (``bootstrap_cached``): the search alone.
- influence: encoder over the trajectories' documents: fast mode embeds once (frozen encoder); full
  mode trains it, 3x forward every epoch.
- select: encoder forward over the whole pool, then k-means (2·n·k·d per iteration) and the greedy
  pick. A later round reuses the pool embeddings when the encoder is frozen (fast mode, or full mode
  with ``influence.freeze_encoder_after_first_round``) and the embedding cache is on.

Time per phase = compute / (devices x the phase's sustained FLOP/s) + memory traffic / bandwidth (a probe
step's optimizer update, a trajectory's state restore) + a fixed start-up per job. GPU rates: an H100 in
bf16 at the utilisations stated in ``H100.name``. CPU rates: effective per-thread FLOP/s measured by
``benchmarks/cost_calibration.py`` on a quickstart-sized run and read from its committed results; the
typed-in fallback is used only where that file is absent. ``cost_summary`` groups the phases as the
paper's Table 5 does (pretraining, oracle, RDIM training, RDIM inference) and the dry-run prints it.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

from megatron_gm.dist import get_logger
from megatron_gm.pipeline.config import PipelineConfig
from megatron_gm.pipeline.plan import Phase, round_count

log = get_logger(__name__)

ROOT = Path(__file__).resolve().parents[2]
CALIBRATION = ROOT / "benchmarks" / "results" / "cost_calibration" / "results.json"
MINILM = (22_700_000, 384)  # all-MiniLM-L6-v2 (the bundled encoder): parameters, embedding width
ENCODERS = {"large": (335_000_000, 1024), "base": (110_000_000, 768), "small": (33_000_000, 384)}
OPT_BYTES_PER_PARAM = 36  # a probe step's Adam update: fp32 master, grad, 2 moments, bf16 copy, read + write
RESTORE_BYTES_PER_PARAM = 28  # a trajectory's restore: master, moments, bf16 copy, copied from the snapshot
KINDS = ("pretraining", "oracle", "RDIM training", "RDIM inference")


@dataclasses.dataclass
class Hardware:
    name: str
    rates: dict[str, float]  # sustained FLOP/s per device (GPU) or per thread (CPU), by phase part
    mem_bw: float  # bytes/s per device: optimizer updates and restores of the oracle
    startup_s: dict[str, float]
    source: str = "typed in"
    per_thread: bool = False  # CPU: rates are per thread, a phase runs on processes x threads


H100 = Hardware(
    "GPU (H100 bf16: 35% MFU training, 30% a probe step of one sequence, 40% the batched forward-only "
    "reference pass, "
    "30% encoder inference, 25% encoder training; 2.3 TB/s for optimizer state)",
    {"pretrain": 0.35 * 989e12, "probe": 0.30 * 989e12, "ref": 0.40 * 989e12,
     "encoder": 0.30 * 989e12, "encoder_train": 0.25 * 989e12, "select": 0.30 * 989e12},
    2.3e12, {"pretrain": 120.0, "oracle": 120.0, "influence": 90.0, "bootstrap": 60.0, "select": 90.0,
             "select_random": 30.0},
)  # fmt: skip

CPU_TYPED = Hardware(
    "CPU (per thread; typed-in guesses: run benchmarks/cost_calibration.py to measure them)",
    {"pretrain": 2.5e10, "probe": 1.7e10, "ref": 1.7e10, "encoder": 1.8e11, "encoder_train": 1.8e11,
     "select": 1.8e11},
    5e9, {"pretrain": 15.0, "oracle": 15.0, "influence": 25.0, "bootstrap": 20.0, "select": 10.0,
          "select_random": 3.0},
    per_thread=True,
)  # fmt: skip


def load_cpu(path: Path = CALIBRATION) -> Hardware:
    """The CPU rates measured by benchmarks/cost_calibration.py, or the typed-in ones without that file."""
    try:
        data = json.loads(Path(path).read_text())
        rates = {k: float(v) for k, v in data["rates"].items()}
        startup = {k: float(v) for k, v in data["startup_s"].items()}
    except (OSError, KeyError, TypeError, ValueError):
        return CPU_TYPED
    merged = {**CPU_TYPED.rates, **rates}
    return Hardware(
        f"CPU (per thread; rates measured by benchmarks/cost_calibration.py on a shared machine, load "
        f"average {data.get('load_average', '?')} after the run: see its report.md)",
        merged, float(data.get("mem_bw", CPU_TYPED.mem_bw)), {**CPU_TYPED.startup_s, **startup},
        source=str(path), per_thread=True,
    )  # fmt: skip


CPU = load_cpu()


@dataclasses.dataclass
class PoolStats:
    num_docs: int
    num_tokens: int
    measured: bool  # False: assumed (no dataset sidecar to read)


def training_tokens(cfg: PipelineConfig) -> float:
    """Tokens the main branch trains on, all stages."""
    return float(cfg.train.stage_ends(cfg.stages)[-1] * cfg.train.global_batch_size * cfg.model.seq_length)


def pool_stats(cfg: PipelineConfig) -> PoolStats:
    try:
        from megatron_gm.data.indexed import load_dataset_info

        info = load_dataset_info(cfg.data_path)
        return PoolStats(int(info.num_docs), int(info.num_tokens), True)
    except Exception:  # a dry-run must work before the data exists
        if cfg.launch.gpus_per_node > 0:  # the paper's pool: twice the training tokens, 1,000-token docs
            tokens = 2 * training_tokens(cfg)
            return PoolStats(max(1, int(tokens / 1000)), int(tokens), False)
        return PoolStats(20_000, 7_000_000, False)  # the bundled pool_20k


@dataclasses.dataclass
class Estimate:
    phase: str
    flops: float
    seconds: float
    note: str


def encoder_size(cfg: PipelineConfig) -> tuple[int, int]:
    """(parameters, width) of the influence model's encoder: its config.json, or its name, or MiniLM."""
    name = cfg.influence.encoder
    if not name:
        return MINILM
    try:
        c = json.loads((Path(name) / "config.json").read_text())
        h, L, f, v = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["vocab_size"]
        return int(L * (4 * h * h + 2 * h * f) + (v + c.get("max_position_embeddings", 512)) * h), int(h)
    except (OSError, KeyError, TypeError, ValueError):
        pass
    for key, size in ENCODERS.items():
        if key in Path(name).name.lower():
            return size
    return MINILM


def chars_per_token(cfg: PipelineConfig) -> float:
    """English characters per LM token: a 50k BPE vocabulary ~4, the quickstart's 8k SentencePiece ~3."""
    return 4.0 if cfg.model.vocab_size >= 32768 else 3.0


def _ref_record_chars(path: str) -> list[int]:
    opener = gzip.open if str(path).endswith(".gz") else open
    out = []
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if (
                isinstance(rec, dict)
                and isinstance(rec.get("context"), str)
                and isinstance(rec.get("target"), str)
            ):
                out.append(len(rec["context"]) + len(rec["target"]) + 1)
            elif isinstance(rec, dict) and isinstance(rec.get("text"), str) and rec["text"].strip():
                out.append(len(rec["text"]))
    return out


def reference_tokens(cfg: PipelineConfig) -> tuple[float, float, str]:
    """(positions one reference pass evaluates, mean example length, how it was found)."""
    o, seq = cfg.oracle, cfg.model.seq_length
    if o.ref_layout == "packed":
        return float(o.ref_samples * seq), float(seq), f"{o.ref_samples} packed windows of {seq}"
    if o.ref_tokens_per_example > 0:
        per = float(min(seq, o.ref_tokens_per_example))
        how = f"{o.ref_samples} examples of {per:.0f} tokens (oracle.ref_tokens_per_example)"
        return o.ref_samples * per, per, how
    try:
        chars = _ref_record_chars(o.ref_data)
    except OSError:
        chars = []
    if not chars:
        return (
            float(o.ref_samples * seq),
            float(seq),
            f"{o.ref_samples} x {seq} (no reference file)",
        )
    cpt = chars_per_token(cfg)
    windows = tokens = 0.0
    for c in chars:  # natural layout: a record's own windows of at most seq tokens
        t = c / cpt + 1
        windows += -(-t // seq)
        tokens += t
    per = tokens / windows
    how = f"{o.ref_samples} examples of ~{per:.0f} tokens ({Path(o.ref_data).name}, {cpt:g} chars/token)"
    return o.ref_samples * per, per, how


def _lm_flops_per_token(cfg: PipelineConfig, train: bool, length: float | None = None) -> float:
    m = cfg.model
    fwd = 2 * m.params() + 4 * m.num_layers * (length or m.seq_length) * m.hidden_size
    return 3 * fwd if train else fwd


def oracle_trajectories(cfg: PipelineConfig, phase: Phase) -> int:
    o = cfg.oracle
    n = 2 * cfg.bootstrap.beams_per_tail if phase.name.endswith("_bootstrap") else o.trajectories
    return round_count(cfg, phase.stage, n)


def encoder_cached(cfg: PipelineConfig, stage: int) -> bool:
    """Whether a selection round reads pool embeddings an earlier round cached. The cache holds frozen
    encoders only: fast mode from round 2 (stage 2) on; full mode frozen after round 1 from round 3 on
    (round 1 scores with its fine-tuned encoder, uncached; round 2 caches that encoder's embeddings)."""
    i = cfg.influence
    if cfg.select.embed_cache == "none":
        return False
    if i.mode == "fast":
        return stage > 1
    return i.freeze_encoder_after_first_round and stage > 2


def bootstrap_cached(cfg: PipelineConfig, stage: int) -> bool:
    """Whether the bootstrap of the round collected from stage ``stage``'s checkpoint reads its probing
    pool's embeddings from the selection's cache. It runs after stage ``stage``'s selection, which filled the
    cache with the frozen encoder the bootstrap's model shares exactly when stage ``stage + 1``'s selection
    reads it (``encoder_cached``): fast mode from stage 1 on, full mode frozen after round 1 from stage 2
    on. The cache is keyed by threads, batch and shard size and device: the bootstrap runs with
    ``launch.threads`` and the tools' default batch and shard size, so other selection threads, or those
    settings in ``select.extra_args``, are a miss."""
    L, extra = cfg.launch, cfg.select.extra_args
    keyed_alike = (L.select_threads or L.threads) == L.threads and not any(
        a.startswith(("--micro-batch-size", "--shard-size", "--device")) for a in extra
    )
    return keyed_alike and encoder_cached(cfg, stage + 1)


@dataclasses.dataclass
class Parts:
    """A phase's FLOPs by the rate that runs them (``Hardware.rates`` keys) and its memory traffic."""

    flops: dict[str, float]
    mem_bytes: float
    note: str


def phase_parts(cfg: PipelineConfig, phase: Phase, pool: PoolStats) -> Parts:
    m, t, o, i, s = cfg.model, cfg.train, cfg.oracle, cfg.influence, cfg.select
    doc_tokens = pool.num_tokens / max(1, pool.num_docs)
    enc_tokens_per_doc = min(doc_tokens, (i.chunk_len or 512) * (i.max_chunks or 64))
    enc_params, enc_dim = encoder_size(cfg)
    if phase.kind == "pretrain":
        iters = (t.first_stage_iters or t.stage_iters) if phase.stage == 0 else t.stage_iters
        tokens = iters * t.global_batch_size * m.seq_length
        evals = (iters // max(1, t.eval_interval) + 1) * t.eval_iters * t.global_batch_size * m.seq_length
        flops = tokens * _lm_flops_per_token(cfg, True) + evals * _lm_flops_per_token(cfg, False)
        return Parts({"pretrain": flops}, 0.0, f"{tokens / 1e6:.2f}M tokens")
    if phase.kind == "oracle":
        n = oracle_trajectories(cfg, phase)
        ref_tokens, ref_len, how = reference_tokens(cfg)
        step = m.seq_length * _lm_flops_per_token(cfg, True)
        ref = ref_tokens * _lm_flops_per_token(cfg, False, ref_len)
        passes = n * o.T + 1  # the checkpoint's loss once, then one pass after every step
        mem = n * (o.T * OPT_BYTES_PER_PARAM + RESTORE_BYTES_PER_PARAM) * m.params()
        note = f"{n} trajectories x T={o.T}; reference {how}"
        return Parts({"probe": n * o.T * step, "ref": passes * ref}, mem, note)
    if phase.kind == "bootstrap":
        probe = min(pool.num_docs, cfg.bootstrap.probe_count or pool.num_docs)  # the pipeline passes 0 = all
        beams = round_count(cfg, phase.stage, cfg.bootstrap.beams_per_tail)
        cached = bootstrap_cached(cfg, phase.stage)
        embed = 0.0 if cached else probe * enc_tokens_per_doc * 2 * enc_params
        search = 2 * o.T * beams * probe * enc_dim * 2  # 2 tails; a step scores beams x documents
        note = f"{probe} documents searched{' (cached embeddings)' if cached else ''}, 2 x {beams} beams"
        return Parts({"encoder": embed + search}, 0.0, note)
    if phase.kind == "influence":
        n = oracle_trajectories(cfg, phase) + (
            oracle_trajectories(cfg, dataclasses.replace(phase, name="x_bootstrap"))
            if phase.name.endswith("_bootstrap")
            else 0
        )
        docs = min(pool.num_docs, n * o.T)
        fwd = docs * enc_tokens_per_doc * 2 * enc_params
        heads_only = i.mode == "fast" or (i.freeze_encoder_after_first_round and phase.stage > 0)
        epochs = i.epochs or (50 if i.mode == "fast" else 5)
        note = f"{'heads only' if heads_only else 'encoder fine-tuned'}, {docs} documents, {epochs} epochs"
        if heads_only:
            return Parts({"encoder": fwd}, 0.0, note)
        return Parts({"encoder_train": fwd * 3 * epochs}, 0.0, note)
    if phase.branch == "random":
        return Parts({}, 0.0, "random pick from the main scores")
    k = s.num_clusters or max(1, round(pool.num_docs / 3000))
    cached = encoder_cached(cfg, phase.stage)
    embed = 0.0 if cached else pool.num_docs * enc_tokens_per_doc * 2 * enc_params
    kmeans = s.kmeans_iters * min(pool.num_docs, 256 * k) * k * enc_dim * 2 + pool.num_docs * k * enc_dim * 2
    greedy = pool.num_docs * (pool.num_docs / k) * s.ratio * enc_dim * 2
    note = f"{pool.num_docs} documents{' (cached embeddings)' if cached else ''}, {k} clusters"
    return Parts({"select": embed + kmeans + greedy}, 0.0, note)


def startup_key(phase: Phase) -> str:
    """Which fixed start-up a phase pays: its kind's, or the random twin's pick from existing scores."""
    return "select_random" if phase.kind == "select" and phase.branch == "random" else phase.kind


def phase_devices(phase: Phase, hw: Hardware) -> int:
    """GPUs of a phase, or on CPU its processes x threads (the rates are per thread)."""
    return max(1, phase.world_size) * (phase.threads if hw.per_thread else 1)


def estimate_phase(cfg: PipelineConfig, phase: Phase, pool: PoolStats, hw: Hardware) -> Estimate:
    parts = phase_parts(cfg, phase, pool)
    compute = sum(f / hw.rates[k] for k, f in parts.flops.items())
    seconds = (
        compute / phase_devices(phase, hw)
        + parts.mem_bytes / hw.mem_bw / max(1, phase.world_size)
        + hw.startup_s[startup_key(phase)]
    )
    return Estimate(phase.name, sum(parts.flops.values()), seconds, parts.note)


def estimate_plan(cfg: PipelineConfig, phases: list[Phase]) -> tuple[list[Estimate], Hardware, PoolStats]:
    hw = H100 if cfg.launch.gpus_per_node > 0 else CPU
    pool = pool_stats(cfg)
    return [estimate_phase(cfg, p, pool, hw) for p in phases], hw, pool


def paper_kind(phase: Phase) -> str | None:
    """The paper's Table 5 row of a phase; None for the random twin (a control, not a cost)."""
    if phase.branch == "random":
        return None
    return {"pretrain": "pretraining", "oracle": "oracle", "influence": "RDIM training"}.get(
        phase.kind, "RDIM inference"
    )


@dataclasses.dataclass
class CostSummary:
    flops: dict[str, float]
    seconds: dict[str, float]  # device-seconds (GPU-seconds; CPU: process-seconds), Table 5's unit

    @property
    def overhead_flops(self) -> float:
        """Selection FLOPs over pretraining FLOPs."""
        return sum(v for k, v in self.flops.items() if k != "pretraining") / self.flops["pretraining"]

    def time_share(self, kind: str) -> float:
        """Share of the whole run's device time (the paper's Table 5 unit: H100-hours)."""
        return self.seconds[kind] / sum(self.seconds.values())

    @property
    def selection_time_share(self) -> float:
        return 1.0 - self.time_share("pretraining")


def cost_summary(phases: list[Phase], ests: list[Estimate]) -> CostSummary:
    flops, seconds = dict.fromkeys(KINDS, 0.0), dict.fromkeys(KINDS, 0.0)
    for p, e in zip(phases, ests, strict=True):
        kind = paper_kind(p)
        if kind is not None:
            flops[kind] += e.flops
            seconds[kind] += e.seconds * max(1, p.world_size)
    return CostSummary(flops, seconds)


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
