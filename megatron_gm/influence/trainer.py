"""One influence-model training run under DeepSpeed: its config, optimizer groups, schedule and loop
(``Run``); ``train.py`` drives it (see there for the method and data parallelism)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from megatron_gm.dist import get_logger
from megatron_gm.errors import GMError
from megatron_gm.influence import dist as gdist
from megatron_gm.influence.data import (
    TrajectoryData,
)
from megatron_gm.influence.io import KIND, load_heads, save_influence_model
from megatron_gm.influence.model import (
    InfluenceModel,
    ModelConfig,
)
from megatron_gm.influence.train_config import DEFAULT_EPOCHS, DEFAULT_LR, TrainConfig
from megatron_gm.manifest import Manifest
from megatron_gm.stats import spearman_ci

log = get_logger(__name__)

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
            log.info(f"resumed {self.workdir.name} from step {state['step']}")
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
