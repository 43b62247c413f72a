"""Saved influence model: a folder that ``load_influence_model`` reads without pickle.

    config.json        model config, encoder reference (path + hash), fine_tuned flag, label z-score stats
    heads.safetensors  head.weight [1, d], head.bias [1], alpha [], tau []
    encoder/           (fine-tuned only) the encoder's safetensors weights, config and tokenizer files
    metrics.json       training metrics (informational)
    manifest.json      kind "influence_model", dataset fingerprint, oracle store digests in ``inputs``;
                       written last, so a folder with a manifest is complete

A frozen encoder is not copied: the folder names its path and hash, and loading refuses an encoder whose
files changed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from megatron_gm.errors import GMError
from megatron_gm.fs import atomic_write_text, read_json, write_folder
from megatron_gm.influence.model import (
    InfluenceModel,
    ModelConfig,
    encoder_hash,
    load_encoder,
)
from megatron_gm.manifest import Manifest

FORMAT_VERSION = 1
KIND = "influence_model"


def save_influence_model(
    folder: str | os.PathLike,
    model: InfluenceModel,
    manifest: Manifest,
    *,
    fine_tuned: bool,
    label_mean: float = 0.0,
    label_std: float = 1.0,
    metrics: dict | None = None,
) -> Path:
    """Write the model folder via a temporary sibling, then swap it in (readers never see half a model)."""

    if manifest.kind != KIND:
        raise GMError(f"{folder}: influence model manifest must have kind {KIND!r}, got {manifest.kind!r}")
    return write_folder(
        folder, lambda tmp: _write_model(tmp, model, manifest, fine_tuned, label_mean, label_std, metrics)
    )


def _write_model(tmp, model, manifest, fine_tuned, label_mean, label_std, metrics) -> None:
    tmp.mkdir(parents=True)
    from safetensors.torch import save_file

    heads = model.heads
    tensors = {
        "head.weight": heads.head.weight.detach().float().cpu().contiguous(),
        "head.bias": heads.head.bias.detach().float().cpu().contiguous(),
        "alpha": heads.alpha.detach().float().cpu().contiguous(),
        "tau": heads.tau.detach().float().cpu().contiguous(),
    }
    save_file(tensors, str(tmp / "heads.safetensors"))
    if fine_tuned:
        model.encoder.save_pretrained(str(tmp / "encoder"), safe_serialization=True)
        model.tokenizer.save_pretrained(str(tmp / "encoder"))
        enc_hash = encoder_hash(tmp / "encoder")
    else:
        enc_hash = encoder_hash(model.config.encoder_path)
    config = {
        "format": FORMAT_VERSION,
        "model": dataclasses.asdict(model.config),
        "chunk_len": model.chunk_len,
        "hidden_size": model.hidden_size,
        "fine_tuned": fine_tuned,
        "encoder_sha256": enc_hash,
        "label_mean": float(label_mean),
        "label_std": float(label_std),
    }
    atomic_write_text(tmp / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    if metrics is not None:
        atomic_write_text(tmp / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    manifest.save(tmp / "manifest.json")


def read_model_config(folder: str | os.PathLike) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise GMError(
            f"{path}: missing; not an influence model folder (train one with tools/train_influence_model.py)"
        )
    cfg = read_json(path, "", "retrain the influence model")
    if cfg.get("format") != FORMAT_VERSION:
        raise GMError(
            f"{path}: format {cfg.get('format')!r} is not {FORMAT_VERSION}; retrain with this version"
        )
    return cfg


def load_influence_model(
    path: str | os.PathLike,
    dataset_fingerprint: str | None = None,
    device: str | torch.device | None = None,
) -> tuple[InfluenceModel, Manifest]:
    """Load a saved model (eval mode). Refuses a model trained for another dataset fingerprint."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(path)
    if not folder.is_dir():
        raise GMError(
            f"{folder}: influence model not found; pass the folder written by tools/train_influence_model.py"
        )
    manifest = Manifest.load(folder / "manifest.json")
    if manifest.kind != KIND:
        raise GMError(f"{folder}: is a {manifest.kind!r} artifact, not an influence model")
    manifest.check(path=folder, dataset_fingerprint=dataset_fingerprint)
    cfg = read_model_config(folder)
    mcfg = ModelConfig(**cfg["model"])
    if cfg["fine_tuned"]:
        enc_path = folder / "encoder"
    else:
        enc_path = Path(mcfg.encoder_path)
        have = encoder_hash(enc_path)
        if have != cfg["encoder_sha256"]:
            raise GMError(
                f"{enc_path}: encoder files changed since {folder} was trained (hash {have} != "
                f"{cfg['encoder_sha256']}); restore that encoder or retrain"
            )
    encoder, tokenizer = load_encoder(enc_path)
    model = InfluenceModel(mcfg, encoder=encoder, tokenizer=tokenizer)
    try:
        tensors = load_file(str(folder / "heads.safetensors"))
    except (FileNotFoundError, SafetensorError) as e:
        raise GMError(f"{folder}/heads.safetensors: unreadable ({e}); retrain the influence model") from e
    with torch.no_grad():
        model.heads.head.weight.copy_(tensors["head.weight"])
        model.heads.head.bias.copy_(tensors["head.bias"])
        model.heads.alpha.copy_(tensors["alpha"])
        model.heads.tau.copy_(tensors["tau"])
    model.label_mean = float(cfg.get("label_mean", 0.0))
    model.label_std = float(cfg.get("label_std", 1.0))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    model.eval()
    return model, manifest


def warm_start_encoder(folder: str | os.PathLike) -> str:
    """The encoder a model warm-started from ``folder`` begins with: its fine-tuned copy, or the frozen
    encoder it names (so a chain of frozen rounds keeps the first round's fine-tuned encoder)."""
    cfg = read_model_config(folder)
    if cfg["fine_tuned"]:
        return str(Path(folder) / "encoder")
    return str(cfg["model"]["encoder_path"])


def load_heads(model: InfluenceModel, folder: str | os.PathLike) -> None:
    """Copy w, b, alpha, tau of the saved model in ``folder`` into ``model`` (a warm start)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(Path(folder) / "heads.safetensors"))
    except (FileNotFoundError, SafetensorError) as e:
        raise GMError(f"{folder}/heads.safetensors: unreadable ({e}); pass another --init-from") from e
    if tuple(tensors["head.weight"].shape) != tuple(model.heads.head.weight.shape):
        raise GMError(
            f"--init-from {folder}: heads of width {tensors['head.weight'].shape[-1]}, the encoder's is "
            f"{model.hidden_size}; warm-start from a model with the same encoder"
        )
    with torch.no_grad():
        model.heads.head.weight.copy_(tensors["head.weight"])
        model.heads.head.bias.copy_(tensors["head.bias"])
        model.heads.alpha.copy_(tensors["alpha"])
        model.heads.tau.copy_(tensors["tau"])
