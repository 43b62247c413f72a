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

from megatron_gm.config import SettingError, check_settings, setting, tool_setting
from megatron_gm.dist import get_logger
from megatron_gm.errors import GMError
from megatron_gm.influence.bootstrap import BootstrapConfig
from megatron_gm.influence.train import TrainConfig as InfluenceTrainConfig
from megatron_gm.oracle.cli import OracleConfig
from megatron_gm.selection.config import SelectConfig

LOG = get_logger(__name__)


@dataclasses.dataclass
class GPTConfig:
    """The GPT (Megatron flags of the same names)."""

    num_layers: int = setting(2, low=1)
    hidden_size: int = setting(64, low=1)
    num_attention_heads: int = setting(4, low=1)
    ffn_hidden_size: int = setting(256, low=1)
    seq_length: int = setting(128, low=1)
    vocab_size: int = setting(8192, "for the FLOPs estimate; the tokenizer decides the real one", low=1)

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

    def validate(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise GMError(
                f"model.hidden_size {self.hidden_size} is not a multiple of the heads {self.num_attention_heads}"
            )


@dataclasses.dataclass
class PretrainConfig:
    """Pretraining: Megatron's own flags; every stage runs ``stage_iters`` iterations."""

    stage_iters: int = setting(100, low=1)
    first_stage_iters: int = setting(
        0, "stage 0's length (0: stage_iters), e.g. a short random warm-up", low=0
    )
    micro_batch_size: int = setting(4, low=1)
    global_batch_size: int = setting(8, low=1)
    lr: float = setting(1e-3, above=0)
    min_lr: float = setting(1e-4, low=0)
    warmup_iters: int = setting(10, low=0)
    save_interval: int = setting(50, low=1)
    eval_interval: int = setting(50, low=1)
    eval_iters: int = setting(4, low=0)
    log_interval: int = setting(10, low=1)
    seed: int = setting(1234, low=0, high=2**31 - 1)
    # LR schedule over the whole run: "cosine", or "WSD" (warmup, constant, then a linear cooldown over the
    # last ``wsd_cooldown`` share of the iterations). WSD's constant phase does not depend on the total, so a
    # stage-0 checkpoint serves runs of any length (token budgets) with a complete schedule each.
    lr_decay_style: str = setting("cosine", choices=("cosine", "WSD"))
    wsd_cooldown: float = setting(0.2, above=0, high=1)
    # in-training evaluation (--gm-eval-pack): an eval pack scored at ``eval_pack_points`` evenly spaced
    # iterations of every stage (and at its end)
    eval_pack: str = setting("")
    eval_pack_points: int = setting(20, low=1)
    extra_args: list[str] = setting(default_factory=list)

    def validate(self) -> None:
        if self.global_batch_size % self.micro_batch_size:
            raise GMError("train.global_batch_size must be a multiple of train.micro_batch_size")
        if self.min_lr > self.lr:
            raise GMError(f"train.min_lr {self.min_lr} is above train.lr {self.lr}")

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


SEED = {"low": 0, "high": 2**31 - 1}


@dataclasses.dataclass
class OracleSection:
    """Oracle collection from each stage checkpoint (tools/collect_oracle.py): its settings by its names."""

    trajectories: int = tool_setting(OracleConfig, "trajectories", 64)
    T: int = tool_setting(OracleConfig, "T", 10)  # also the bootstrap round's trajectory length
    ref_data: str = tool_setting(
        OracleConfig, "ref_data", ""
    )  # the reference set jsonl (--ref); required to run an oracle
    ref_samples: int = tool_setting(OracleConfig, "ref_samples", 32)
    seed: int = tool_setting(OracleConfig, "seed", 1234)  # also the bootstrap round's seed
    extra_args: list[str] = setting(default_factory=list)
    ref_layout: str = tool_setting(OracleConfig, "ref_layout", "natural")
    # the reference set's mean example length for the estimate (0: measured from the reference file)
    ref_tokens_per_example: int = setting(0, low=0)
    # a later selection round probes this share of the first round's trajectories (random and bootstrap)
    later_round_fraction: float = setting(1.0, above=0, high=1)


@dataclasses.dataclass
class BootstrapSection:
    """The bootstrap round (docs/method.md step 3, tools/bootstrap_trajectories.py); T and seed are the oracle's."""

    beams_per_tail: int = tool_setting(BootstrapConfig, "beams_per_tail", 0, low=0)  # 0: no bootstrap round
    width: int = tool_setting(BootstrapConfig, "width", 5)
    probe_count: int = tool_setting(BootstrapConfig, "probe_count", 0)  # 0: the whole pool, always passed


@dataclasses.dataclass
class InfluenceSection:
    """The relational influence model (tools/train_influence_model.py): its settings by its names."""

    mode: str = tool_setting(InfluenceTrainConfig, "mode", "fast")
    epochs: int = tool_setting(InfluenceTrainConfig, "epochs", 0)
    chunk_len: int = tool_setting(InfluenceTrainConfig, "chunk_len", 0)
    max_chunks: int = tool_setting(InfluenceTrainConfig, "max_chunks", 0)
    train_batch_size: int = tool_setting(InfluenceTrainConfig, "train_batch_size", 0)
    val_count: int = tool_setting(InfluenceTrainConfig, "val_count", 0)
    seed: int = tool_setting(InfluenceTrainConfig, "seed", 1234, **SEED)
    extra_args: list[str] = setting(default_factory=list)
    encoder: str = tool_setting(InfluenceTrainConfig, "encoder", "")
    warm_start: bool = setting(False, "a later round starts from the previous round's influence model")
    freeze_encoder_after_first_round: bool = setting(False, "full mode: later rounds train the heads only")


@dataclasses.dataclass
class SelectSection:
    """Cluster-based selection (tools/select_data.py): its settings by its names."""

    method: str = tool_setting(SelectConfig, "method", "group")
    ratio: float = tool_setting(SelectConfig, "ratio", 0.5)
    num_clusters: int = tool_setting(SelectConfig, "num_clusters", 0, low=0)  # 0: the tool's default
    kmeans_iters: int = tool_setting(SelectConfig, "kmeans_iters", 20)
    seed: int = tool_setting(SelectConfig, "seed", 1234)
    # frozen-encoder pool embeddings, reused by every later round: "" = RUN/embeddings, "none" = off
    embed_cache: str = setting("")
    extra_args: list[str] = setting(default_factory=list)


@dataclasses.dataclass
class LaunchConfig:
    """Processes and Slurm resources per phase."""

    nodes: int = setting(1, low=1)
    gpus_per_node: int = setting(0, "0: CPU; the Slurm scripts then start nproc_per_node processes", low=0)
    nproc_per_node: int = setting(1, "torchrun processes per node (pretrain, oracle, influence)", low=1)
    select_ranks: int = setting(1, "MPI ranks of the selection (one task per rank)", low=1)
    threads: int = setting(1, "CPU threads per process (torch, BLAS, faiss)", low=1)
    select_threads: int = setting(
        0, "threads per selection rank (0: threads); the artifact depends on it", low=0
    )
    cpus_per_task: int = setting(0, "Slurm --cpus-per-task (0: threads * processes on the node)", low=0)
    partition: str = setting("")
    account: str = setting("")
    time_pretrain: str = setting("01:00:00")
    time_oracle: str = setting("01:00:00")
    time_influence: str = setting("01:00:00")
    time_bootstrap: str = setting("01:00:00")
    time_select: str = setting("01:00:00")
    signal_seconds: int = setting(120, "Slurm sends SIGUSR1 this long before the time limit", low=0)
    sbatch_args: list[str] = setting(default_factory=list)


# Settings renamed to the tools' own names: old ``section.field`` -> new. A saved config.json that uses an
# old name loads under the new one (with a warning); ``--set`` with an old name is refused, naming the new.
RENAMED = {
    "oracle.traj_len": "oracle.T",
    "oracle.ref_max_examples": "oracle.ref_samples",
    "oracle.ref_path": "oracle.ref_data",
    "oracle.bootstrap_beams": "bootstrap.beams_per_tail",
    "oracle.bootstrap_width": "bootstrap.width",
    "oracle.bootstrap_probe_count": "bootstrap.probe_count",
}


@dataclasses.dataclass
class PipelineConfig:
    preset: str = setting("tiny")
    stages: int = setting(2, low=1)
    random_twin: bool = setting(True)
    data_path: str = setting("", "Megatron dataset prefix of the candidate pool (with its .gm.json sidecar)")
    tokenizer_type: str = setting("GPTSentencePieceTokenizer")
    tokenizer_model: str = setting("")
    model: GPTConfig = dataclasses.field(default_factory=GPTConfig)
    train: PretrainConfig = dataclasses.field(default_factory=PretrainConfig)
    oracle: OracleSection = dataclasses.field(default_factory=OracleSection)
    bootstrap: BootstrapSection = dataclasses.field(default_factory=BootstrapSection)
    influence: InfluenceSection = dataclasses.field(default_factory=InfluenceSection)
    select: SelectSection = dataclasses.field(default_factory=SelectSection)
    launch: LaunchConfig = dataclasses.field(default_factory=LaunchConfig)

    # --- checks -----------------------------------------------------------------------------------
    def validate(self, *, need_data: bool = True) -> PipelineConfig:
        """Every setting's rule, the tools' own ``validate()`` included, before anything runs."""
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
        _named(check_settings, self, {f.name: f.name for f in dataclasses.fields(self)})
        for name in _sections(self):
            section = getattr(self, name)
            _named(check_settings, section, {f.name: f"{name}.{f.name}" for f in dataclasses.fields(section)})
        self.model.validate()
        self.train.validate()
        for check, names in tool_checks(self):
            _named(check, None, names)
        return self

    # --- (de)serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PipelineConfig:
        d = _renamed(d)
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
        key = key.strip()
        if key in RENAMED:
            raise GMError(
                f"--set {key}: renamed to {RENAMED[key]} (the tool's own name); use --set {RENAMED[key]}=..."
            )
        obj: Any = self
        parts = key.split(".")
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


def tool_checks(cfg: PipelineConfig) -> list[tuple[Any, dict[str, str]]]:
    """The tools' own ``validate()`` on their configs as the plan runs them (paths are placeholders: only
    values are checked), each with the ``section.field`` that sets each of the tool's fields."""
    o, b, i, s = cfg.oracle, cfg.bootstrap, cfg.influence, cfg.select
    where = "<planned>"
    out: list[tuple[Any, dict[str, str]]] = []

    def shared(section: Any, name: str, tool: type) -> tuple[dict[str, Any], dict[str, str]]:
        tool_fields = {f.name for f in dataclasses.fields(tool)}
        common = [f.name for f in dataclasses.fields(section) if f.name in tool_fields]
        return {k: getattr(section, k) for k in common}, {k: f"{name}.{k}" for k in common}

    values, names = shared(o, "oracle", OracleConfig)
    values["ref_data"] = o.ref_data or None  # "": the bundled set, checked by the driver before the run
    oracle = OracleConfig(output=where, **values)
    out.append((lambda: oracle.validate(files=False), names))
    values, names = shared(i, "influence", InfluenceTrainConfig)
    out.append(
        (InfluenceTrainConfig(data_path=where, oracle=[where], output=where, **values).validate, names)
    )
    values, names = shared(s, "select", SelectConfig)
    values["num_clusters"] = s.num_clusters or None  # 0: the tool's default
    out.append(
        (
            SelectConfig(output=where, stage=1, data_path=where, influence_model=where, **values).validate,
            names,
        )
    )
    if b.beams_per_tail:
        values, names = shared(b, "bootstrap", BootstrapConfig)
        boot = BootstrapConfig(model=where, data_path=where, output=where, T=o.T, seed=o.seed, **values)
        out.append((boot.validate, {**names, "T": "oracle.T", "seed": "oracle.seed"}))
    return out


def _named(check: Any, cfg: Any, names: dict[str, str]) -> None:
    """Run ``check(cfg)`` (or ``check()`` when cfg is None); a SettingError is reported by ``section.field``."""
    try:
        check() if cfg is None else check(cfg)
    except SettingError as e:
        key = names.get(e.field, e.flag)
        sep = " " if e.reason.startswith("must") else ": "
        raise GMError(f"{key}{sep}{e.reason}, got {e.value!r} (--set {key}=VALUE)") from None


def _renamed(d: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the old names (``RENAMED``) moved to the new ones, each with a warning."""
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for old, new in RENAMED.items():
        (osec, ofield), (nsec, nfield) = old.split("."), new.split(".")
        if ofield in d.get(osec, {}):
            LOG.warning("config.json: %s is now %s; read as such", old, new)
            d.setdefault(nsec, {})[nfield] = d[osec].pop(ofield)
    return d


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
