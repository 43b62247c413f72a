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
from megatron_gm.influence.io import KIND, load_heads, save_influence_model, warm_start_encoder
from megatron_gm.influence.model import (
    InfluenceModel,
    ModelConfig,
    check_encoder_path,
    default_encoder_path,
    encoder_hash,
)
from megatron_gm.manifest import Manifest
from megatron_gm.stats import spearman_ci

MODES = ("full", "fast")
DEFAULT_LR = {"full": 5e-5, "fast": 1e-2}
DEFAULT_EPOCHS = {"full": 5, "fast": 50}


@dataclasses.dataclass
class TrainConfig:
    data_path: str  # Megatron data prefix of the pool
    oracle: list[str]  # oracle store folders (several rounds at once)
    output: str  # the model folder (only the model's files)
    mode: str = "full"
    encoder: str = ""  # "" = bundled MiniLM
    chunk_len: int = 0
    max_chunks: int = 0
    relation: bool = True
    epochs: int = 0  # 0 = mode default (full 5, fast 50)
    lr: float = 0.0  # 0 = mode default (full 5e-5 as in the paper, fast 1e-2)
    weight_decay: float = 0.01
    warmup_steps: int = 50
    val_count: int = 0  # 0 = min(1000, 5 %)
    eval_interval: int = 0  # optimizer steps between evaluations; 0 = once per epoch
    seed: int = 1234
    embed_batch_size: int = 32
    deepspeed_config: str = ""  # JSON file; "" = built-in defaults
    zero_stage: int = -1  # -1 = from the config (default 0)
    train_batch_size: int = 0  # trajectories per optimizer step; 0 = from the config (default 32)
    micro_batch_size: int = 0  # per rank; 0 = from the config (default 8)
    ablation: str = "same"  # also train without the relation term: same mode, fast, or none
    max_steps: int = 0  # stop after this many optimizer steps (benchmarks); 0 = all epochs
    progress: bool = True
    train_dir: str = ""  # training state; "" = "<output>_train"
    init_from: str = ""  # warm start: a saved model's heads, and its encoder unless --encoder is given

    def validate(self) -> TrainConfig:
        if self.mode not in MODES:
            raise GMError(f"--mode must be one of {MODES}, got {self.mode!r}")
        if self.ablation not in ("same", "fast", "none"):
            raise GMError(f"--ablation must be same, fast or none, got {self.ablation!r}")
        for name in (
            "epochs",
            "val_count",
            "eval_interval",
            "embed_batch_size",
            "max_steps",
            "warmup_steps",
        ):
            if getattr(self, name) < 0:
                raise GMError(f"--{name.replace('_', '-')} must be >= 0")
        if self.lr < 0 or self.weight_decay < 0:
            raise GMError("--lr and --weight-decay must be >= 0")
        if self.zero_stage not in (-1, 0, 1, 2, 3):
            raise GMError(f"--zero-stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if not self.output:
            raise GMError("--output is required")
        return self


# -- DeepSpeed config ----------------------------------------------------------------------------------


def deepspeed_config(cfg: TrainConfig, world: int) -> dict:
    ds: dict = {}
    if cfg.deepspeed_config:
        try:
            ds = json.loads(Path(cfg.deepspeed_config).read_text())
        except FileNotFoundError as e:
            raise GMError(
                f"{cfg.deepspeed_config}: DeepSpeed config not found; fix --deepspeed_config"
            ) from e
        except json.JSONDecodeError as e:
            raise GMError(f"{cfg.deepspeed_config}: not valid JSON ({e})") from e
    for forbidden in ("optimizer", "scheduler"):
        if forbidden in ds:
            raise GMError(
                f"{cfg.deepspeed_config}: remove the {forbidden!r} section; this tool uses torch AdamW with "
                "warmup + linear decay (--lr, --weight-decay, --warmup-steps)"
            )
    tbs = cfg.train_batch_size or int(ds.get("train_batch_size", 32))
    micro = cfg.micro_batch_size or int(
        ds.get("train_micro_batch_size_per_gpu", min(8, max(1, tbs // world)))
    )
    if tbs % (micro * world):
        raise GMError(
            f"train batch size {tbs} is not a multiple of micro batch {micro} x {world} processes; "
            "change --train-batch-size/--micro-batch-size or the number of processes"
        )
    ds.update(
        train_batch_size=tbs,
        train_micro_batch_size_per_gpu=micro,
        gradient_accumulation_steps=tbs // (micro * world),
        zero_allow_untested_optimizer=True,
        steps_per_print=ds.get("steps_per_print", 1 << 30),
    )
    ds.setdefault("gradient_clipping", 1.0)
    zero = dict(ds.get("zero_optimization", {}))
    if cfg.zero_stage >= 0:
        zero["stage"] = cfg.zero_stage
    zero.setdefault("stage", 0)
    ds["zero_optimization"] = zero
    return ds


def lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only (not on biases, norms, α, τ)."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


# -- one training run ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Prepared:
    """What both the main run and the ablation share."""

    data: TrajectoryData
    fingerprint: str
    train_idx: np.ndarray
    val_idx: np.ndarray
    y: np.ndarray  # z-scored labels [n, T]
    label_mean: float
    label_std: float
    unique_docs: np.ndarray
    texts: dict[int, str] | None = None
    embeddings: np.ndarray | None = None  # frozen-encoder h of unique_docs


class Run:
    """One model fitted on the prepared data (relation on or off, full or fast)."""

    def __init__(
        self,
        cfg: TrainConfig,
        prep: Prepared,
        mode: str,
        relation: bool,
        workdir: Path,
        rank: int,
        world: int,
    ):
        self.cfg, self.prep, self.mode, self.relation = cfg, prep, mode, relation
        self.workdir, self.rank, self.world = workdir, rank, world
        self.epochs = cfg.epochs or DEFAULT_EPOCHS[mode]
        self.lr = cfg.lr or DEFAULT_LR[mode]

    # inputs of a batch of trajectories -> predictions [B, T]
    def predict(self, engine, rows: np.ndarray) -> torch.Tensor:
        docs = self.prep.data.documents[rows]
        if self.mode == "full":
            texts = [self.prep.texts[int(d)] for d in docs.reshape(-1)]
            return engine(texts, docs.shape)
        pos = np.searchsorted(self.prep.unique_docs, docs)
        h = torch.from_numpy(self.prep.embeddings[pos]).to(gdist.device())
        return engine(h)

    def target(self, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.prep.y[rows]).to(gdist.device())

    @torch.no_grad()
    def evaluate(self, engine) -> dict:
        from scipy.stats import spearmanr

        val = self.prep.val_idx
        mine = np.array_split(val, self.world)[self.rank]
        micro = engine.train_micro_batch_size_per_gpu()
        engine.eval()
        preds = [
            self.predict(engine, mine[i : i + micro]).float().cpu().numpy()
            for i in range(0, len(mine), micro)
        ]
        engine.train()
        local = np.concatenate(preds) if preds else np.zeros((0, self.prep.data.T), np.float32)
        pred = np.concatenate(gdist.gather_objects(local))
        y = self.prep.y[val]
        rho = float(spearmanr(pred.reshape(-1), y.reshape(-1)).statistic)
        self.last_val = (pred, y)  # for the confidence interval of a new best
        return {
            "spearman": rho if np.isfinite(rho) else float("-inf"),
            "mse": float(np.mean((pred - y) ** 2)),
        }

    def fit(self, model_config: ModelConfig) -> dict:
        import deepspeed
        from tqdm import tqdm

        cfg, prep = self.cfg, self.prep
        torch.manual_seed(cfg.seed)
        model = InfluenceModel(dataclasses.replace(model_config, relation=self.relation))
        if cfg.init_from:
            load_heads(model, cfg.init_from)
        if self.mode == "fast":
            model.encoder.requires_grad_(False)
            module = model.heads
        else:
            module = model
        model.to(gdist.device())
        ds_cfg = deepspeed_config(cfg, self.world)
        tbs, micro, gas = (
            ds_cfg[k]
            for k in (
                "train_batch_size",
                "train_micro_batch_size_per_gpu",
                "gradient_accumulation_steps",
            )
        )
        steps_per_epoch = len(prep.train_idx) // tbs
        if steps_per_epoch == 0:
            raise GMError(
                f"only {len(prep.train_idx)} training trajectories for a batch of {tbs}; lower --train-batch-size"
            )
        total = steps_per_epoch * self.epochs  # the LR schedule's length
        stop = min(total, cfg.max_steps) if cfg.max_steps else total  # --max-steps stops early, same schedule
        optimizer = torch.optim.AdamW(param_groups(module, cfg.weight_decay), lr=self.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(min(cfg.warmup_steps, total), total)
        )
        engine, _, _, _ = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg
        )
        ckpt_dir = self.workdir / "checkpoints"
        state = {
            "step": 0,
            "best_spearman": float("-inf"),
            "best_step": -1,
            "history": [],
            "epoch_times": {},
        }
        if (ckpt_dir / "latest").exists():
            _, client = engine.load_checkpoint(
                str(ckpt_dir), load_optimizer_states=True, load_lr_scheduler_states=True
            )
            state.update({k: client[k] for k in state if k in client})
            if self.rank == 0:
                print(f"resumed {self.workdir.name} from step {state['step']}", flush=True)
        eval_every = cfg.eval_interval or steps_per_epoch
        manifest = self.manifest(model_config)
        bar = tqdm(
            total=stop,
            initial=min(state["step"], stop),
            desc=f"train {self.workdir.name} ({self.mode})",
            disable=not (cfg.progress and self.rank == 0),
            dynamic_ncols=True,
        )
        while state["step"] < stop:
            step = state["step"]
            epoch, in_epoch = divmod(step, steps_per_epoch)
            perm = np.random.default_rng([cfg.seed, epoch]).permutation(prep.train_idx)
            batch = perm[in_epoch * tbs : (in_epoch + 1) * tbs]
            t0 = time.perf_counter()
            loss_sum = 0.0
            for k in range(gas):
                chunk = batch[k * micro * self.world : (k + 1) * micro * self.world]
                rows = chunk[self.rank * micro : (self.rank + 1) * micro]
                pred = self.predict(engine, rows)
                loss = torch.nn.functional.mse_loss(pred.float(), self.target(rows))
                engine.backward(loss)
                engine.step()
                loss_sum += float(loss.detach())
            state["step"] = step = step + 1
            times = state["epoch_times"]
            times[str(epoch)] = times.get(str(epoch), 0.0) + time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{gdist.mean_scalar(loss_sum / gas):.4f}")
            if step % eval_every == 0 or step == stop:
                metrics = self.evaluate(engine)
                metrics.update(step=step, epoch=epoch, alpha=model.alpha, tau=model.tau)
                state["history"].append(metrics)
                if metrics["spearman"] > state["best_spearman"]:
                    lo, hi = spearman_ci(*self.last_val, n=500, seed=cfg.seed)  # resamples trajectories
                    metrics["spearman_ci95"] = [lo, hi]
                    state["best_spearman"], state["best_step"] = (
                        metrics["spearman"],
                        step,
                    )
                    self.save_best(engine, model, manifest, metrics)
                if self.rank == 0:
                    bar.write(
                        f"[{self.workdir.name}] step {step}/{total} val spearman {metrics['spearman']:.4f} "
                        f"mse {metrics['mse']:.4f} alpha {metrics['alpha']:.4f} tau {metrics['tau']:.4f}"
                    )
                self.checkpoint(engine, state)
        bar.close()
        best = next(h for h in state["history"] if h["step"] == state["best_step"])
        return {
            "mode": self.mode,
            "relation": self.relation,
            "best": best,
            "history": state["history"],
            "steps": state["step"],
            "schedule_steps": total,
            "steps_per_epoch": steps_per_epoch,
            "epoch_seconds": {int(k): v for k, v in state["epoch_times"].items()},
            "world_size": self.world,
            "deepspeed": {
                "zero_stage": ds_cfg["zero_optimization"]["stage"],
                "train_batch_size": tbs,
                "micro_batch_size": micro,
                "gradient_accumulation_steps": gas,
            },
        }

    def manifest(self, model_config: ModelConfig) -> Manifest:
        first = self.prep.data.manifests[0]
        return Manifest(
            KIND,
            self.prep.fingerprint,
            stage=first.stage,
            iteration=first.iteration,
            seed=self.cfg.seed,
            config={
                "mode": self.mode,
                "relation": self.relation,
                "encoder": model_config.encoder_path,
                "chunk_len": model_config.chunk_len,
                "max_chunks": model_config.max_chunks,
                "epochs": self.epochs,
                "lr": self.lr,
                "val_trajectories": len(self.prep.val_idx),
                "train_trajectories": len(self.prep.train_idx),
            },
            inputs=self.prep.data.inputs(),
        )

    def save_best(self, engine, model: InfluenceModel, manifest: Manifest, metrics: dict) -> None:
        import deepspeed

        def save():
            if self.rank == 0:
                save_influence_model(
                    self.workdir / "best",
                    model,
                    manifest,
                    fine_tuned=self.mode == "full",
                    label_mean=self.prep.label_mean,
                    label_std=self.prep.label_std,
                    metrics=metrics,
                )

        if engine.zero_optimization_stage() == 3:
            with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
                save()
        else:
            save()
        gdist.barrier()

    def checkpoint(self, engine, state: dict) -> None:
        ckpt_dir = self.workdir / "checkpoints"
        tag = f"step{state['step']:07d}"
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=dict(state))
        gdist.barrier()
        if self.rank == 0:
            for old in ckpt_dir.iterdir():
                if old.is_dir() and old.name.startswith("step") and old.name != tag:
                    shutil.rmtree(old, ignore_errors=True)


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
