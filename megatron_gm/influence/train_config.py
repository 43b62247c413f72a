"""The settings of an influence-model training run (``tools/train_influence_model.py``)."""

from __future__ import annotations

import dataclasses

from megatron_gm.config import check_settings, setting
from megatron_gm.errors import GMError

MODES = ("full", "fast")
DEFAULT_LR = {"full": 5e-5, "fast": 1e-2}
DEFAULT_EPOCHS = {"full": 5, "fast": 50}


@dataclasses.dataclass
class TrainConfig:
    """The influence model's training; each field is the flag ``--<field>`` of train_influence_model.py."""

    data_path: str = setting(help="Megatron data prefix of the candidate pool")
    oracle: list[str] = setting(help="oracle store folder(s); several = several rounds")
    output: str = setting(help="model folder to write (the best model and metrics.json)")
    mode: str = setting(
        "full", "full: fine-tune the encoder (paper); fast: frozen encoder, heads on cached embeddings",
        choices=MODES,
    )  # fmt: skip
    encoder: str = setting("", "local HF encoder folder (default: the bundled MiniLM)")
    chunk_len: int = setting(0, "tokens per chunk (default: encoder maximum)", low=0)
    max_chunks: int = setting(0, "chunks per document at most (default: all)", low=0)
    relation: bool = setting(True, "train s(x) only (the MATES ablation)", flag="--no-relation")
    epochs: int = setting(0, "default: 5 (full), 50 (fast)", low=0)
    lr: float = setting(0.0, "default: 5e-5 (full, paper), 1e-2 (fast)", low=0)
    weight_decay: float = setting(0.01, "AdamW weight decay", low=0)
    warmup_steps: int = setting(50, "linear LR warm-up steps", low=0)
    val_count: int = setting(0, "held-out trajectories (default min(1000, 5%%))", low=0)
    eval_interval: int = setting(0, "optimizer steps between evaluations (0: epoch)", low=0)
    seed: int = setting(1234, "split, initialisation and shuffling seed")
    embed_batch_size: int = setting(32, "chunks per encoder call when embedding", low=0)
    deepspeed_config: str = setting(
        "", "DeepSpeed JSON (batch sizes, zero_optimization, bf16, gradient_clipping)",
        flag=("--deepspeed_config", "--deepspeed-config"),
    )  # fmt: skip
    zero_stage: int = setting(-1, "override the config's ZeRO stage", choices=(-1, 0, 1, 2, 3))
    train_batch_size: int = setting(0, "trajectories per optimizer step", low=0)
    micro_batch_size: int = setting(0, "trajectories per process per micro-step")
    ablation: str = setting(
        "same", "also train without the relation term: in the same mode, in fast mode, or not",
        choices=("same", "fast", "none"),
    )  # fmt: skip
    max_steps: int = setting(0, "stop after this many steps (same LR schedule)", low=0)
    progress: bool = setting(True, "no progress bars", flag="--no-progress")
    train_dir: str = setting("", "training state: checkpoints, caches (default OUTPUT_train)")
    init_from: str = setting(
        "",
        "warm start from a saved influence model (the previous round's): its heads, and its encoder "
        "unless --encoder is given; with --mode fast that encoder is frozen, so a fine-tuned first round's "
        "encoder serves every later round and their pool embeddings can be cached",
        metavar="MODEL",
    )

    def validate(self) -> TrainConfig:
        check_settings(self)
        if not self.output:
            raise GMError("--output is required")
        return self
