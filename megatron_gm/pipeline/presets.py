"""Named sizes for the whole loop. ``tiny`` is the CPU quickstart; ``small``..``large`` are GPU runs.

``test`` is smaller still: the end-to-end tests run it on a slice of the pool in seconds per phase.
The GPU presets follow the paper's DCLM scales (400M-4x, 1B-1x) in spirit; adjust with ``--set``.
"""

from __future__ import annotations

from pathlib import Path

from megatron_gm.errors import GMError
from megatron_gm.pipeline.config import (
    BootstrapSection,
    GPTConfig,
    InfluenceSection,
    LaunchConfig,
    OracleSection,
    PipelineConfig,
    PretrainConfig,
    SelectSection,
)


def _test() -> PipelineConfig:
    return PipelineConfig(
        preset="test",
        stages=2,
        random_twin=False,
        model=GPTConfig(num_layers=1, hidden_size=32, num_attention_heads=2, ffn_hidden_size=64, seq_length=64),
        train=PretrainConfig(
            stage_iters=8, micro_batch_size=2, global_batch_size=2, lr=1e-3, min_lr=1e-4, warmup_iters=2,
            save_interval=4, eval_interval=8, eval_iters=1, log_interval=4,
        ),
        oracle=OracleSection(trajectories=16, T=3, ref_samples=4),
        influence=InfluenceSection(mode="fast", epochs=3, chunk_len=64, max_chunks=1, train_batch_size=4, val_count=4),
        select=SelectSection(ratio=0.5, num_clusters=2, kmeans_iters=5),
        launch=LaunchConfig(threads=1),
    )  # fmt: skip


def _tiny() -> PipelineConfig:
    return PipelineConfig(
        preset="tiny",
        stages=3,  # two selection rounds; the second reuses the pool embeddings (select.embed_cache)
        random_twin=True,
        model=GPTConfig(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=256, seq_length=128),
        train=PretrainConfig(
            stage_iters=150, micro_batch_size=8, global_batch_size=8, lr=2e-3, min_lr=2e-4, warmup_iters=10,
            save_interval=50, eval_interval=50, eval_iters=8, log_interval=25,
        ),
        oracle=OracleSection(trajectories=64, T=10, ref_samples=16),
        influence=InfluenceSection(mode="fast", chunk_len=64, max_chunks=1),
        select=SelectSection(ratio=0.5, num_clusters=0, kmeans_iters=20),
        # two MPI ranks of one thread score the pool faster than one rank of two threads
        launch=LaunchConfig(threads=2, select_ranks=2, select_threads=1),
    )  # fmt: skip


def _gpu(
    name: str, layers: int, hidden: int, heads: int, seq: int, iters: int, gbs: int, nodes: int
) -> PipelineConfig:
    return PipelineConfig(
        preset=name,
        stages=4,
        random_twin=False,
        model=GPTConfig(
            num_layers=layers, hidden_size=hidden, num_attention_heads=heads, ffn_hidden_size=4 * hidden,
            seq_length=seq, vocab_size=50304,
        ),
        train=PretrainConfig(
            stage_iters=iters, micro_batch_size=8, global_batch_size=gbs, lr=3e-3 if hidden <= 1024 else 2e-3,
            min_lr=3e-5, warmup_iters=min(2000, iters // 2), save_interval=1000, eval_interval=1000,
            eval_iters=20, log_interval=50,
        ),
        # 16 reference examples: the smallest size whose labels reach split-half reliability 0.9
        # (benchmarks/results/label_reliability; measured on the quickstart model, re-measure at scale).
        # Later rounds: a quarter of the first round's trajectories, heads warm-started on the first
        # round's fine-tuned encoder (frozen), so the pool is embedded twice, not every round
        oracle=OracleSection(trajectories=20000, T=10, ref_samples=16, later_round_fraction=0.25),
        bootstrap=BootstrapSection(beams_per_tail=10000, probe_count=20000),
        influence=InfluenceSection(mode="full", epochs=5, warm_start=True, freeze_encoder_after_first_round=True),
        select=SelectSection(ratio=0.5, num_clusters=0, kmeans_iters=100),
        launch=LaunchConfig(
            nodes=nodes, gpus_per_node=8, nproc_per_node=8, select_ranks=8 * nodes, threads=8,
            cpus_per_task=0, time_pretrain="24:00:00", time_oracle="12:00:00", time_influence="06:00:00",
            time_select="06:00:00",
        ),
    )  # fmt: skip


LAMBADA_REF = Path(__file__).resolve().parents[3] / "shared" / "data" / "lambada_ref.jsonl.gz"
# DCLM scales (Li et al. 2024) as the paper runs them: layers, hidden, heads, training tokens
PAPER_SCALES = {
    "400m-4x": (24, 1024, 16, 4 * 8.2e9),
    "1b-1x": (24, 2048, 16, 28.8e9),
    "3b-1x": (32, 2560, 32, 55.9e9),
}


def paper(scale: str) -> PipelineConfig:
    """The paper's setting at a DCLM scale: one selection round (2 stages), 20k random + 20k bootstrap
    trajectories of T=10, 128 prompt/target reference examples at their own length (the bundled LAMBADA
    records stand in for FLAN), a BERT-base-sized encoder fine-tuned in full mode, 10,000 clusters; the
    dry-run assumes a pool of twice the training tokens. For the cost model (Table 5), not a recipe."""
    layers, hidden, heads, tokens = PAPER_SCALES[scale]
    cfg = _gpu(f"paper-{scale}", layers, hidden, heads, 2048, 1, 1024, 4)
    cfg.stages = 2
    cfg.train.stage_iters = round(tokens / cfg.stages / (cfg.train.global_batch_size * cfg.model.seq_length))
    cfg.train.warmup_iters = 2000
    cfg.oracle = OracleSection(trajectories=20000, T=10, ref_samples=128, ref_data=str(LAMBADA_REF))
    cfg.bootstrap = BootstrapSection(beams_per_tail=10000, probe_count=20000)
    cfg.influence = InfluenceSection(mode="full", epochs=5, encoder="bge-base-en-v1.5")
    cfg.select = SelectSection(ratio=0.5, num_clusters=10000, kmeans_iters=100)
    return cfg


PRESETS = {
    "test": _test,
    "tiny": _tiny,
    # ~125M on one 8-GPU node, 4 stages of 5k iterations at 256 x 1024 tokens (~5B tokens)
    "small": lambda: _gpu("small", 12, 768, 12, 1024, 5000, 256, 1),
    # ~400M (the paper's 400M-4x scale), 2 nodes
    "medium": lambda: _gpu("medium", 24, 1024, 16, 2048, 8000, 512, 2),
    # ~1.3B (1B-1x), 4 nodes
    "large": lambda: _gpu("large", 24, 2048, 16, 2048, 6000, 1024, 4),
    **{f"paper-{k}": (lambda k=k: paper(k)) for k in PAPER_SCALES},
}


def preset(name: str) -> PipelineConfig:
    if name not in PRESETS:
        raise GMError(f"unknown --preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()
