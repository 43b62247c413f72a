"""The settings of an influence-model training run (``tools/train_influence_model.py``)."""

from __future__ import annotations

import dataclasses

from megatron_gm.errors import GMError

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
