"""The plan: every phase of every stage, its command line, its dependencies and its outputs.

Layout of a run folder ``OUT`` (every job writes only under its own stage folder):

    OUT/config.json, OUT/state.json, OUT/logs/<phase>.log, OUT/report.{txt,json}
    OUT/stage{s}/checkpoints     Megatron checkpoints of stage s (loads stage{s-1}'s at first start)
    OUT/stage{s}/oracle          oracle store collected from stage s's checkpoint
    OUT/stage{s}/influence       influence model trained on that store
    OUT/stage{s}/selection       what stage s trains on (made from stage s-1's model), + .scores
    OUT/random/stage{s}/...      the random-selection twin (same budget), from stage 1 on

Phase names are ``[random.]stage{s}.{kind}``; kinds are pretrain, oracle, influence, select. The same
``Phase`` drives the local executor (local.py) and the Slurm driver (slurm.py): both run the tool with
exactly these arguments, so their artifacts are the same bytes.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

from megatron_gm.pipeline.config import PipelineConfig

# kind -> (entry point relative to the repository root, launcher, sbatch script)
TOOLS = {
    "pretrain": ("pretrain_gpt_gm.py", "torchrun", "slurm/pretrain_stage.sbatch"),
    "oracle": ("tools/collect_oracle.py", "torchrun", "slurm/collect_oracle.sbatch"),
    "influence": ("tools/train_influence_model.py", "torchrun", "slurm/train_influence.sbatch"),
    "bootstrap": ("tools/bootstrap_trajectories.py", "single", "slurm/bootstrap.sbatch"),
    "select": ("tools/select_data.py", "mpi", "slurm/select_data.sbatch"),
}


@dataclasses.dataclass
class Phase:
    name: str
    kind: str
    stage: int
    branch: str  # "main" or "random"
    tool: str  # relative to the repository root
    args: list[str]  # the tool's arguments (no launcher)
    deps: list[str]
    launcher: str  # "torchrun": one launcher per node; "mpi": one process per rank; "single": one process
    nodes: int
    procs_per_node: int  # torchrun workers per node, or MPI ranks per node
    threads: int
    time_limit: str
    script: str  # the sbatch script
    outputs: dict[str, str]  # name -> absolute path
    complete_marker: str = ""  # a file whose presence means the phase's artifact is complete
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # GM_* variables the phase needs

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    def command(self) -> str:
        return shlex.join([self.tool, *self.args])


def load_dir(phase: Phase) -> str:
    """Where a pretraining stage loads from: its own checkpoints once it has saved (a resumed or requeued
    run), else the previous stage's (its own, still empty, for stage 0). The sbatch script does the same."""
    own, init = phase.env.get("GM_CKPT_DIR", ""), phase.env.get("GM_INIT_CKPT", "")
    if init and not (Path(own) / "latest_checkpointed_iteration.txt").is_file():
        return init
    return own


def phase_name(branch: str, stage: int, kind: str) -> str:
    return f"{'random.' if branch == 'random' else ''}stage{stage}.{kind}"


def _data_args(cfg: PipelineConfig) -> list[str]:
    args = ["--data-path", cfg.data_path, "--tokenizer-type", cfg.tokenizer_type]
    if cfg.tokenizer_model:
        args += ["--tokenizer-model", cfg.tokenizer_model]
    return args


def _megatron_model_args(cfg: PipelineConfig) -> list[str]:
    # without CUDA, pretrain_gpt_gm.py and collect_oracle.py add the CPU flags themselves (gloo, local layers)
    return [*cfg.model.args(), *_data_args(cfg), "--seed", str(cfg.train.seed)]


def schedule_args(cfg: PipelineConfig, total: int) -> list[str]:
    """Megatron's LR-schedule flags for a run of ``total`` iterations."""
    t = cfg.train
    args = ["--lr-decay-style", t.lr_decay_style, "--lr-decay-iters", str(total)]
    if t.lr_decay_style == "WSD":
        cooldown = max(1, round(t.wsd_cooldown * total))
        args += ["--lr-wsd-decay-style", "linear", "--lr-wsd-decay-iters", str(cooldown)]
    return args + ["--lr-warmup-iters", str(t.warmup_iters)]


def pretrain_args(cfg: PipelineConfig, stage: int, ckpt: Path, selection: Path | None) -> list[str]:
    t = cfg.train
    total = t.stage_ends(cfg.stages)[-1]
    args = [
        *_megatron_model_args(cfg),
        "--micro-batch-size", str(t.micro_batch_size),
        "--global-batch-size", str(t.global_batch_size),
        "--train-iters", str(total),
        "--lr", str(t.lr), "--min-lr", str(t.min_lr),
        *schedule_args(cfg, total),
        "--weight-decay", "0.1", "--clip-grad", "1.0",
        "--split", "98,2,0",
        "--save", str(ckpt), "--save-interval", str(t.save_interval),
        "--eval-interval", str(t.eval_interval), "--eval-iters", str(t.eval_iters),
        "--log-interval", str(t.log_interval),
        "--exit-signal-handler",
        "--gm-stage", str(stage), "--gm-stage-iters", t.stage_iters_flag(cfg.stages),
    ]  # fmt: skip
    if selection is not None:
        args += ["--gm-selection", str(selection)]
    if t.eval_pack:
        args += ["--gm-eval-pack", t.eval_pack, "--gm-eval-points", str(t.eval_pack_points)]
    return args + list(t.extra_args)


def round_count(cfg: PipelineConfig, stage: int, n: int) -> int:
    """Trajectories (or bootstrap beams) of the round collected from stage ``stage``'s checkpoint: the first
    round's ``n``, a later round ``oracle.later_round_fraction`` of it."""
    return n if stage == 0 else max(1, round(n * cfg.oracle.later_round_fraction))


def oracle_args(
    cfg: PipelineConfig, stage: int, ckpt: Path, out: Path, ref: str, trajectory_file: Path | None = None
) -> list[str]:
    o = cfg.oracle
    if trajectory_file is None:
        source = ["--gm-oracle-trajectories", str(round_count(cfg, stage, o.trajectories))]
    else:  # the bootstrap round: every trajectory of the file
        source = ["--gm-oracle-policy", "file", "--gm-oracle-trajectory-file", str(trajectory_file)]
    args = [
        *_megatron_model_args(cfg),
        "--micro-batch-size", "1",
        "--load", str(ckpt),
        "--gm-stage", str(stage),
        *source,
        "--gm-oracle-T", str(o.T),
        "--gm-oracle-ref-data", ref,
        "--gm-oracle-ref-samples", str(o.ref_samples),
        "--gm-oracle-seed", str(o.seed),
        "--gm-oracle-output", str(out),
    ]  # fmt: skip
    if o.ref_layout != "natural":  # the tool's default is natural
        args += ["--gm-oracle-ref-layout", o.ref_layout]
    return args + list(o.extra_args)


def influence_args(
    cfg: PipelineConfig,
    oracles: list[Path],
    out: Path,
    init_from: Path | None = None,
    frozen: bool = False,
    stage: int = 0,
) -> list[str]:
    """``init_from``: warm start from that model; ``frozen``: train the heads only on its encoder.
    ``stage``: the checkpoint's stage; a later round holds out the same fraction of its fewer trajectories
    for validation (``round_count``), so an explicit ``influence.val_count`` still fits."""
    i = cfg.influence
    val_count = round_count(cfg, stage, i.val_count) if i.val_count else 0
    args = [
        "--data-path", cfg.data_path, "--oracle", *map(str, oracles), "--output", str(out),
        "--mode", "fast" if frozen else i.mode, "--seed", str(i.seed), "--threads", str(cfg.launch.threads),
        "--no-progress",
    ]  # fmt: skip
    if init_from is not None:
        args += ["--init-from", str(init_from)]
    elif i.encoder:
        args += ["--encoder", i.encoder]
    for flag, v in (
        ("--epochs", i.epochs), ("--chunk-len", i.chunk_len), ("--max-chunks", i.max_chunks),
        ("--train-batch-size", i.train_batch_size), ("--val-count", val_count),
    ):  # fmt: skip
        if v:
            args += [flag, str(v)]
    return args + list(i.extra_args)


def bootstrap_args(
    cfg: PipelineConfig, model: Path, out: Path, stage: int = 0, *, embed_cache: Path | None = None
) -> list[str]:
    """``embed_cache``: the selection's pool-embedding cache (``embed_cache_dir``). The tool reads the
    probing pool's h from it when the model is frozen (fast mode, a frozen later round) and an earlier
    selection filled it with the same encoder, batch size, threads and device; else it embeds as without."""
    o, b = cfg.oracle, cfg.bootstrap
    beams = round_count(cfg, stage, b.beams_per_tail)
    args = [
        "--model", str(model), "--data-path", cfg.data_path, "--output", str(out),
        "--T", str(o.T), "--width", str(b.width), "--beams-per-tail", str(beams),
        "--tails", "both", "--seed", str(o.seed), "--threads", str(cfg.launch.threads), "--no-progress",
        "--probe-count", str(b.probe_count),  # always: 0 means the whole pool, not the tool's default
    ]  # fmt: skip
    if embed_cache is not None:
        args += ["--embed-cache", str(embed_cache)]
    return args


def select_args(
    cfg: PipelineConfig,
    stage: int,
    out: Path,
    *,
    model: Path | None,
    scores_from: Path | None,
    method: str,
    embed_cache: Path | None = None,
) -> list[str]:
    s = cfg.select
    args = ["--data-path", cfg.data_path]
    if scores_from is not None:
        args += ["--scores-from", str(scores_from)]
    else:
        args += ["--gm-influence-model", str(model)]
        if embed_cache is not None:
            args += ["--embed-cache", str(embed_cache)]
    args += [
        "--gm-select-method", method, "--gm-select-ratio", repr(float(s.ratio)),
        "--gm-kmeans-iters", str(s.kmeans_iters), "--seed", str(s.seed),
        "--gm-stage", str(stage), "--output", str(out),
        "--threads", str(cfg.launch.select_threads or cfg.launch.threads), "--no-progress",
    ]  # fmt: skip
    if s.num_clusters:
        args += ["--gm-num-clusters", str(s.num_clusters)]
    return args + list(s.extra_args)


def embed_cache_dir(cfg: PipelineConfig, out: Path) -> Path | None:
    """Where selection keeps frozen-encoder pool embeddings across rounds (None: off)."""
    c = cfg.select.embed_cache
    if c == "none":
        return None
    return Path(c) if c else out / "embeddings"


def ckpt_env(cfg: PipelineConfig, stage: int, ckpt: Path, init: Path | None) -> dict[str, str]:
    """A pretraining stage's checkpoint folders and the iteration its checkpoint must reach to be done."""
    return {
        "GM_CKPT_DIR": str(ckpt),
        "GM_INIT_CKPT": str(init) if init else "",
        "GM_EXPECT_ITER": str(cfg.train.stage_ends(cfg.stages)[stage]),
    }


def checkpoint_iteration(ckpt: str | Path) -> str:
    """Megatron's latest saved iteration in ``ckpt`` ('' when none)."""
    try:
        return (Path(ckpt) / "latest_checkpointed_iteration.txt").read_text().strip()
    except OSError:
        return ""


def build_plan(cfg: PipelineConfig, out: str | Path, ref_data: str = "") -> list[Phase]:
    """Every phase in dependency order. ``ref_data``: the oracle's reference set (``--ref``) when
    oracle.ref_data is unset."""
    out = Path(out).resolve()
    L = cfg.launch
    ref = cfg.oracle.ref_data or ref_data
    phases: list[Phase] = []

    def add(kind: str, branch: str, stage: int, args: list[str], deps: list[str], outputs: dict[str, Path],
            marker: Path | None = None, env: dict[str, str] | None = None, suffix: str = "") -> str:  # fmt: skip
        tool, launcher, script = TOOLS[kind]
        if launcher == "mpi":
            nodes, per_node = 1 if L.select_ranks <= 1 else L.nodes, max(1, L.select_ranks // max(1, L.nodes))
            if L.select_ranks % per_node or nodes * per_node != L.select_ranks:
                nodes, per_node = 1, L.select_ranks
        elif launcher == "single":
            nodes, per_node = 1, 1
        else:
            nodes, per_node = L.nodes, L.nproc_per_node
        name = phase_name(branch, stage, kind) + suffix
        phases.append(
            Phase(
                name=name, kind=kind, stage=stage, branch=branch, tool=tool, args=args, deps=deps,
                launcher=launcher, nodes=nodes, procs_per_node=per_node,
                threads=(L.select_threads or L.threads) if launcher == "mpi" else L.threads,
                time_limit=getattr(L, f"time_{kind}"), script=script,
                outputs={k: str(v) for k, v in outputs.items()},
                complete_marker=str(marker) if marker else "", env=env or {},
            )
        )  # fmt: skip
        return name

    prev_pretrain = ""
    prev_model: Path | None = None  # the previous round's final influence model
    later = cfg.influence.warm_start or cfg.influence.freeze_encoder_after_first_round
    pool_cache = embed_cache_dir(cfg, out)  # filled by the selections, read by later bootstraps too
    for s in range(cfg.stages):
        d = out / f"stage{s}"
        ckpt = d / "checkpoints"
        sel = d / "selection" if s > 0 else None
        deps = [phase_name("main", s, "select")] if s > 0 else []
        env = ckpt_env(cfg, s, ckpt, out / f"stage{s - 1}" / "checkpoints" if s else None)
        prev_pretrain = add(
            "pretrain", "main", s, pretrain_args(cfg, s, ckpt, sel), deps + ([prev_pretrain] if s else []),
            {"checkpoints": ckpt}, env=env,
        )  # fmt: skip
        if s == cfg.stages - 1:
            break
        oracle = add("oracle", "main", s, oracle_args(cfg, s, ckpt, d / "oracle", ref), [prev_pretrain],
                     {"oracle": d / "oracle"})  # fmt: skip
        model = d / "influence"
        init = prev_model if later else None
        frozen = init is not None and cfg.influence.freeze_encoder_after_first_round
        infl = add("influence", "main", s, influence_args(cfg, [d / "oracle"], model, init, frozen, s), [oracle],
                   {"influence": model}, marker=model / "manifest.json")  # fmt: skip
        if cfg.bootstrap.beams_per_tail:  # method.md step 3: probe beam-searched tails, retrain on both
            trajs = d / "bootstrap"
            bs = add("bootstrap", "main", s, bootstrap_args(cfg, model, trajs, s, embed_cache=pool_cache),
                     [infl], {"trajectories": trajs}, marker=trajs / "manifest.json")  # fmt: skip
            oracle2 = d / "oracle_bootstrap"
            ob = add("oracle", "main", s, oracle_args(cfg, s, ckpt, oracle2, ref, trajs), [bs],
                     {"oracle": oracle2}, suffix="_bootstrap")  # fmt: skip
            model = d / "influence_bootstrap"
            infl = add("influence", "main", s, influence_args(cfg, [d / "oracle", oracle2], model, init, frozen, s),
                       [ob], {"influence": model}, marker=model / "manifest.json", suffix="_bootstrap")  # fmt: skip
        prev_model = model
        nxt = out / f"stage{s + 1}" / "selection"
        add("select", "main", s + 1,
            select_args(cfg, s + 1, nxt, model=model, scores_from=None, method=cfg.select.method,
                        embed_cache=pool_cache),
            [infl], {"selection": nxt}, marker=nxt / "manifest.json")  # fmt: skip

    if cfg.random_twin and cfg.stages > 1:
        prev = phase_name("main", 0, "pretrain")
        prev_ckpt = out / "stage0" / "checkpoints"
        for s in range(1, cfg.stages):
            d = out / "random" / f"stage{s}"
            sel = d / "selection"
            main_sel = out / f"stage{s}" / "selection"
            scores = Path(f"{main_sel}.scores")
            pick = add("select", "random", s,
                       select_args(cfg, s, sel, model=None, scores_from=scores, method="random"),
                       [phase_name("main", s, "select")], {"selection": sel}, marker=sel / "manifest.json")  # fmt: skip
            ckpt = d / "checkpoints"
            prev = add("pretrain", "random", s, pretrain_args(cfg, s, ckpt, sel), [pick, prev],
                       {"checkpoints": ckpt}, env=ckpt_env(cfg, s, ckpt, prev_ckpt))  # fmt: skip
            prev_ckpt = ckpt
    return phases


def by_name(phases: list[Phase]) -> dict[str, Phase]:
    return {p.name: p for p in phases}
