"""The configuration of one multi-stage Group-MATES run: sizes of every phase and how each is launched.

A preset (presets.py) fills every field; ``--set section.field=value`` overrides any of them. The config
is saved with the run (``OUT/config.json``); a rerun on the same folder must use the same config, except
``stages`` and ``random_twin``, which may grow (the loop continues from what is done).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import typing
from pathlib import Path
from typing import Any

from megatron_gm.errors import GMError


@dataclasses.dataclass
class ModelConfig:
    """The GPT (Megatron flags of the same names)."""

    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    ffn_hidden_size: int = 256
    seq_length: int = 128
    vocab_size: int = 8192  # for the FLOPs estimate; the tokenizer decides the real one

    def args(self) -> list[str]:
        return [
            "--num-layers", str(self.num_layers),
            "--hidden-size", str(self.hidden_size),
            "--num-attention-heads", str(self.num_attention_heads),
            "--ffn-hidden-size", str(self.ffn_hidden_size),
            "--seq-length", str(self.seq_length),
            "--max-position-embeddings", str(self.seq_length),
        ]  # fmt: skip

    def params(self) -> int:
        """Parameters, embeddings included (tied output layer)."""
        h, f, L = self.hidden_size, self.ffn_hidden_size, self.num_layers
        per_layer = 4 * h * h + 2 * h * f + 9 * h + f
        return L * per_layer + self.vocab_size * h + self.seq_length * h + 2 * h


@dataclasses.dataclass
class TrainConfig:
    """Pretraining: Megatron's own flags; every stage runs ``stage_iters`` iterations."""

    stage_iters: int = 100
    first_stage_iters: int = 0  # stage 0's length (0: stage_iters), e.g. a short random warm-up stage
    micro_batch_size: int = 4
    global_batch_size: int = 8
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 10
    save_interval: int = 50
    eval_interval: int = 50
    eval_iters: int = 4
    log_interval: int = 10
    seed: int = 1234
    # LR schedule over the whole run: "cosine", or "WSD" (warmup, constant, then a linear cooldown over the
    # last ``wsd_cooldown`` share of the iterations). WSD's constant phase does not depend on the total, so a
    # stage-0 checkpoint serves runs of any length (token budgets) with a complete schedule each.
    lr_decay_style: str = "cosine"
    wsd_cooldown: float = 0.2
    # in-training evaluation (--gm-eval-pack): an eval pack scored at ``eval_pack_points`` evenly spaced
    # iterations of every stage (and at its end)
    eval_pack: str = ""
    eval_pack_points: int = 20
    extra_args: list[str] = dataclasses.field(default_factory=list)

    def stage_ends(self, stages: int) -> list[int]:
        """The iteration at which each stage ends (the last one is the run's --train-iters)."""
        first = self.first_stage_iters or self.stage_iters
        return [first + k * self.stage_iters for k in range(stages)]

    def stage_iters_flag(self, stages: int) -> str:
        """``--gm-stage-iters``: the uniform length, or the stage boundaries when stage 0 differs."""
        if not self.first_stage_iters:
            return str(self.stage_iters)
        # the list form ("F," for two stages): the stage after the last boundary runs to --train-iters
        return ",".join(str(e) for e in self.stage_ends(stages)[:-1]) + ("," if stages <= 2 else "")


@dataclasses.dataclass
class OracleConfig:
    """Oracle collection from each stage checkpoint (tools/collect_oracle.py)."""

    trajectories: int = 64
    traj_len: int = 10
    ref_path: str = ""  # the reference set jsonl (tools/run_pipeline.py --ref); required to run an oracle
    ref_max_examples: int = 32
    seed: int = 1234
    # the bootstrap round (METHOD step 3): beam-searched trajectories per tail (0: no bootstrap round),
    # beam width, and how many random pool documents the search draws from (0: the whole pool)
    bootstrap_beams: int = 0
    bootstrap_width: int = 5
    bootstrap_probe_count: int = 0
    extra_args: list[str] = dataclasses.field(default_factory=list)
    # the reference set: each example at its own length ("natural", the paper's) or seq-length windows
    # ("packed"); its mean example length for the estimate (0: measured from the reference file)
    ref_layout: str = "natural"
    ref_tokens_per_example: int = 0
    # a later selection round probes this share of the first round's trajectories (random and bootstrap)
    later_round_fraction: float = 1.0


@dataclasses.dataclass
class InfluenceConfig:
    """The relational influence model (tools/train_influence_model.py)."""

    mode: str = "fast"
    epochs: int = 0  # 0: the tool's default for the mode
    chunk_len: int = 0
    max_chunks: int = 0
    train_batch_size: int = 0  # trajectories per optimizer step (0: the tool's default)
    val_count: int = 0  # held-out trajectories (0: the tool's default, min(1000, 5%))
    seed: int = 1234
    extra_args: list[str] = dataclasses.field(default_factory=list)
    encoder: str = ""  # local HF encoder folder ("": the bundled MiniLM)
    warm_start: bool = False  # a later round starts from the previous round's influence model
    freeze_encoder_after_first_round: bool = False  # full mode: later rounds train the heads only


@dataclasses.dataclass
class SelectConfig:
    """Cluster-based selection (tools/select_data.py)."""

    method: str = "group"
    ratio: float = 0.5
    num_clusters: int = 0  # 0: the tool's default (about 3,000 documents a cluster)
    kmeans_iters: int = 20
    seed: int = 1234
    # frozen-encoder pool embeddings, reused by every later round: "" = RUN/embeddings, "none" = off
    embed_cache: str = ""
    extra_args: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class LaunchConfig:
    """Processes and Slurm resources per phase."""

    nodes: int = 1
    gpus_per_node: int = 0  # 0: CPU; the Slurm scripts then start nproc_per_node processes
    nproc_per_node: int = 1  # torchrun processes per node (pretrain, oracle, influence)
    select_ranks: int = 1  # MPI ranks of the selection (one task per rank)
    threads: int = 1  # CPU threads per process (torch, BLAS, faiss)
    select_threads: int = 0  # threads per selection rank (0: threads); the artifact depends on it
    cpus_per_task: int = 0  # Slurm --cpus-per-task (0: threads * processes on the node)
    partition: str = ""
    account: str = ""
    time_pretrain: str = "01:00:00"
    time_oracle: str = "01:00:00"
    time_influence: str = "01:00:00"
    time_bootstrap: str = "01:00:00"
    time_select: str = "01:00:00"
    signal_seconds: int = 120  # Slurm sends SIGUSR1 this long before the time limit: save, requeue
    sbatch_args: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class PipelineConfig:
    preset: str = "tiny"
    stages: int = 2
    random_twin: bool = True
    data_path: str = ""  # Megatron dataset prefix of the candidate pool (with its .gm.json sidecar)
    tokenizer_type: str = "GPTSentencePieceTokenizer"
    tokenizer_model: str = ""
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    oracle: OracleConfig = dataclasses.field(default_factory=OracleConfig)
    influence: InfluenceConfig = dataclasses.field(default_factory=InfluenceConfig)
    select: SelectConfig = dataclasses.field(default_factory=SelectConfig)
    launch: LaunchConfig = dataclasses.field(default_factory=LaunchConfig)

    # --- checks -----------------------------------------------------------------------------------
    def validate(self, *, need_data: bool = True) -> PipelineConfig:
        if self.stages < 1:
            raise GMError(f"--stages must be >= 1, got {self.stages}")
        if need_data:
            if not self.data_path:
                raise GMError("no --data-path: pass the Megatron dataset prefix of the pool")
            sidecar = Path(f"{self.data_path}.gm.json")
            if not sidecar.is_file():
                raise GMError(
                    f"{sidecar}: not found; preprocess the pool with tools/preprocess_data.py "
                    "(or register it with tools/register_dataset.py)"
                )
            if self.tokenizer_model and not Path(self.tokenizer_model).is_file():
                raise GMError(f"{self.tokenizer_model}: tokenizer model not found; pass --tokenizer-model")
        m, t = self.model, self.train
        check_ranges(self)
        if m.hidden_size % m.num_attention_heads:
            raise GMError(
                f"model.hidden_size {m.hidden_size} is not a multiple of the heads {m.num_attention_heads}"
            )
        if t.global_batch_size % t.micro_batch_size:
            raise GMError("train.global_batch_size must be a multiple of train.micro_batch_size")
        if t.min_lr > t.lr:
            raise GMError(f"train.min_lr {t.min_lr} is above train.lr {t.lr}")
        if t.first_stage_iters < 0:
            raise GMError(
                f"train.first_stage_iters must be >= 0 (0: train.stage_iters), got {t.first_stage_iters}"
            )
        if t.lr_decay_style not in ("cosine", "WSD"):
            raise GMError(f"train.lr_decay_style must be cosine or WSD, got {t.lr_decay_style!r}")
        if not 0 < t.wsd_cooldown <= 1:
            raise GMError(f"train.wsd_cooldown must be in (0, 1], got {t.wsd_cooldown}")
        if t.eval_pack_points < 1:
            raise GMError(f"train.eval_pack_points must be >= 1, got {t.eval_pack_points}")
        if self.oracle.ref_layout not in ("natural", "packed"):
            raise GMError(f"oracle.ref_layout must be natural or packed, got {self.oracle.ref_layout!r}")
        if not 0 < self.oracle.later_round_fraction <= 1:
            raise GMError(
                f"oracle.later_round_fraction must be in (0, 1], got {self.oracle.later_round_fraction}"
            )
        return self

    # --- (de)serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PipelineConfig:
        cfg = cls()
        for key, value in d.items():
            if not hasattr(cfg, key):
                continue
            cur = getattr(cfg, key)
            if dataclasses.is_dataclass(cur):
                known = {f.name for f in dataclasses.fields(cur)}
                setattr(cfg, key, type(cur)(**{k: v for k, v in value.items() if k in known}))
            else:
                setattr(cfg, key, value)
        return cfg

    def identity(self) -> dict[str, Any]:
        """What must not change between a run and its continuation (not stages, twin or launch)."""
        d = self.to_dict()
        for k in ("stages", "random_twin", "launch", "preset"):
            d.pop(k)
        return d

    def override(self, assignment: str) -> None:
        """Apply one ``section.field=value`` (or ``field=value``) from ``--set``."""
        key, sep, raw = assignment.partition("=")
        if not sep:
            raise GMError(f"--set {assignment!r}: expected section.field=value, e.g. train.stage_iters=50")
        obj: Any = self
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if not hasattr(obj, p) or not dataclasses.is_dataclass(getattr(obj, p)):
                raise GMError(f"--set {key}: no section {p!r}; sections: {', '.join(_sections(self))}")
            obj = getattr(obj, p)
        name = parts[-1]
        fields = {f.name: f for f in dataclasses.fields(obj)}
        if name not in fields or dataclasses.is_dataclass(getattr(obj, name)):
            raise GMError(f"--set {key}: unknown field; known: {', '.join(sorted(fields))}")
        hints = typing.get_type_hints(type(obj))
        setattr(obj, name, _parse(hints[name], raw, key))


# Allowed values of every number and choice, by ``section.field``: (lowest, highest) with None for no
# bound (POSITIVE: above 0), or a tuple of choices.
POSITIVE = "positive"
RANGES: dict[str, tuple] = {
    "stages": (1, None),
    **{f"model.{k}": (1, None) for k in ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size",
                                         "seq_length", "vocab_size")},
    **{f"train.{k}": (1, None) for k in ("stage_iters", "micro_batch_size", "global_batch_size",
                                         "save_interval", "eval_interval", "log_interval")},
    "train.lr": (POSITIVE, None), "train.min_lr": (0.0, None), "train.warmup_iters": (0, None),
    "train.eval_iters": (0, None), "train.seed": (0, 2**31 - 1),
    "oracle.trajectories": (1, None), "oracle.traj_len": (1, None), "oracle.ref_max_examples": (1, None),
    "oracle.seed": (0, 2**31 - 1), "oracle.bootstrap_beams": (0, None), "oracle.bootstrap_width": (1, None),
    "oracle.bootstrap_probe_count": (0, None),
    "influence.mode": ("fast", "full"),
    **{f"influence.{k}": (0, None) for k in ("epochs", "chunk_len", "max_chunks", "train_batch_size",
                                             "val_count")},
    "influence.seed": (0, 2**31 - 1),
    "select.method": ("group", "individual", "quota", "random"),
    "select.ratio": (POSITIVE, 1.0), "select.num_clusters": (0, None), "select.kmeans_iters": (1, None),
    "select.seed": (0, 2**31 - 1),
    **{f"launch.{k}": (1, None) for k in ("nodes", "nproc_per_node", "select_ranks", "threads")},
    **{f"launch.{k}": (0, None) for k in ("gpus_per_node", "select_threads", "cpus_per_task", "signal_seconds")},
}  # fmt: skip


def check_ranges(cfg: PipelineConfig) -> None:
    """Every setting has its declared type and lies in its range (``RANGES``); one line naming it if not."""
    import math

    values: list[tuple[str, Any, Any]] = []
    top = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            sub = typing.get_type_hints(type(v))
            values += [(f"{f.name}.{g.name}", getattr(v, g.name), sub[g.name]) for g in dataclasses.fields(v)]
        else:
            values.append((f.name, v, top[f.name]))
    for key, v, kind in values:
        where = f"--set {key}={v!r}" if not isinstance(v, list) else f"--set {key}"
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if typing.get_origin(kind) is list:
            ok_type = isinstance(v, list) and all(isinstance(x, str) for x in v)
        else:
            ok_type = isinstance(v, kind) and not (kind is not bool and isinstance(v, bool))
        if not ok_type:
            raise GMError(f"{where}: must be a {getattr(kind, '__name__', kind)}")
        if isinstance(v, float) and not math.isfinite(v):
            raise GMError(f"{where}: must be a finite number")
        rule = RANGES.get(key)
        if rule is None:
            continue
        if isinstance(rule[0], str) and rule[0] != POSITIVE:
            if v not in rule:
                raise GMError(f"{where}: must be one of {', '.join(rule)}")
            continue
        lo, hi = rule
        if lo == POSITIVE and not v > 0:
            raise GMError(f"{where}: must be > 0" + (f" and <= {hi}" if hi is not None else ""))
        if (lo != POSITIVE and lo is not None and v < lo) or (hi is not None and v > hi):
            bounds = [f">= {lo}" if lo not in (None, POSITIVE) else "", f"<= {hi}" if hi is not None else ""]
            raise GMError(f"{where}: must be {' and '.join(b for b in bounds if b)}")


def _sections(cfg: PipelineConfig) -> list[str]:
    return [f.name for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))]


def _parse(kind: Any, raw: str, key: str) -> Any:
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if typing.get_origin(kind) is list:
            return shlex.split(raw)
        return raw
    except ValueError as e:
        raise GMError(f"--set {key}={raw}: not a valid {getattr(kind, '__name__', kind)}") from e
