"""Evaluate Megatron checkpoints: reference-set loss and a prompt/target eval (LAMBADA's final word).

    python tools/evaluate.py --load OUT/stage1/checkpoints --gm-eval-ref ref_wikitext103_valid.jsonl.gz \\
        --gm-eval-prompts lambada_eval.jsonl.gz --gm-eval-output eval.json

- reference loss: the reference jsonl packed into fixed ``seq_length`` samples exactly as the oracle's
  reference set (megatron_gm/data/reference.py, a seeded subset of ``--gm-eval-ref-samples``); the
  token mean of the loss over every counted token.
- prompt eval: one sample per ``context``/``target`` record, only the target tokens count. ``loss`` is
  the token mean over all target tokens, ``example_loss`` the mean of the per-record means, ``accuracy``
  the fraction of records whose greedy argmax reproduces every target token.

The model is Megatron's GPT built and loaded by ``runtime`` (as pretraining does); the loss is computed
from its logits (the full padded vocabulary, as Megatron's own loss), the argmax over the tokenizer's
vocabulary. Model and tokenizer flags the command line leaves out are taken from the checkpoint's saved
args. ``--gm-eval-iterations all`` evaluates every saved iteration in ``--load`` in one process.
One process, no tensor or pipeline parallelism (evaluation of the small models this project trains).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from megatron_gm.dist import single_process_env
from megatron_gm.errors import GMError
from megatron_gm.fs import atomic_write_text
from megatron_gm.megatron.checkpoint_args import check_architecture, given_flags, inherit_flags, pre_parse
from megatron_gm.megatron.scoring import prompt_metrics, reference_metrics, score_samples

# Flags the evaluation takes from the checkpoint's saved args when the command line leaves them out.
INHERITED = (
    "--num-layers", "--hidden-size", "--ffn-hidden-size", "--num-attention-heads", "--max-position-embeddings",
    "--seq-length", "--tokenizer-type", "--tokenizer-model", "--vocab-size", "--make-vocab-size-divisible-by",
    "--seed", "--micro-batch-size", "--global-batch-size",
)  # fmt: skip


def add_eval_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """An ``extra_args_provider``: the ``--gm-eval-*`` group."""
    if "--gm-eval-output" in parser._option_string_actions:
        return parser
    g = parser.add_argument_group(title="megatron-gm evaluation")
    g.add_argument("--gm-eval-ref", type=str, default=None, help="reference jsonl (text records packed)")
    g.add_argument("--gm-eval-ref-samples", type=int, default=256, help="seeded subset of reference samples")
    g.add_argument("--gm-eval-prompts", type=str, default=None, help="jsonl of context/target records")
    g.add_argument("--gm-eval-prompts-max", type=int, default=0, help="first N records only (0: all)")
    g.add_argument("--gm-eval-batch", type=int, default=16, help="samples per forward pass")
    g.add_argument("--gm-eval-iterations", type=str, default="latest", help="latest, all, or e.g. 50,100")
    g.add_argument(
        "--gm-eval-prompts-latest-only",
        action="store_true",
        help="prompt eval only at the last of the evaluated iterations (reference loss at every one)",
    )
    g.add_argument("--gm-eval-output", type=str, default=None, help="JSON file to write (default: stdout)")
    return parser


@dataclasses.dataclass
class EvalConfig:
    ref: str | None
    ref_samples: int
    prompts: str | None
    prompts_max: int
    batch: int
    iterations: str
    output: str | None
    prompts_latest_only: bool = False

    @classmethod
    def from_args(cls, a) -> EvalConfig:
        return cls(a.gm_eval_ref, a.gm_eval_ref_samples, a.gm_eval_prompts, a.gm_eval_prompts_max,
                   a.gm_eval_batch, a.gm_eval_iterations, a.gm_eval_output, a.gm_eval_prompts_latest_only)  # fmt: skip

    def validate(self) -> EvalConfig:
        if not self.ref and not self.prompts:
            raise GMError("nothing to evaluate: pass --gm-eval-ref and/or --gm-eval-prompts")
        for flag, path in (("--gm-eval-ref", self.ref), ("--gm-eval-prompts", self.prompts)):
            if path and not os.path.isfile(path):
                raise GMError(f"{flag} {path}: file not found")
        if self.ref_samples < 1 or self.batch < 1 or self.prompts_max < 0:
            raise GMError(
                "--gm-eval-ref-samples and --gm-eval-batch must be >= 1, --gm-eval-prompts-max >= 0"
            )
        if self.output and os.path.isdir(self.output):
            raise GMError(f"--gm-eval-output {self.output}: is a folder; pass a .json file path")
        return self


def inherit(argv: list[str], ckpt) -> list[str]:
    """Model/tokenizer flags from the checkpoint plus the training flags Megatron's parser needs."""
    given, extra = given_flags(argv), []
    for flag in INHERITED:
        v = ckpt.saved(flag[2:].replace("-", "_"))
        if flag not in given and v is not None:
            extra += [flag, str(v)]
    if "--no-load-optim" not in given:
        extra.append("--no-load-optim")
    if "--no-load-rng" not in given:
        extra.append("--no-load-rng")
    return extra + inherit_flags(argv + extra, ckpt)


def iterations_to_run(load: str, spec: str, latest: int) -> list[int]:
    if spec == "latest":
        return [latest]
    if spec == "all":
        its = sorted(int(p.name[5:]) for p in Path(load).glob("iter_*") if p.name[5:].isdigit())
        return its or [latest]
    try:
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise GMError(
            f"--gm-eval-iterations {spec!r}: expected latest, all or a comma list of ints"
        ) from None


@dataclasses.dataclass
class Prepared:
    args: object
    cfg: EvalConfig
    session: object
    tokenizer: object
    fmt: object
    iterations: list
    reference: object  # ReferenceSet or None
    prompts: tuple | None  # (tokens, mask, skipped)


def prepare(argv: list[str]) -> Prepared:
    """Parse and check everything, then start Megatron and load the checkpoint (one process)."""
    import torch

    from megatron_gm.data.reference import build_reference, prompt_samples
    from megatron_gm.megatron import runtime
    from megatron_gm.megatron.checkpoint import inspect_checkpoint
    from megatron_gm.megatron.samples import SampleFormat

    pre = pre_parse(argv)
    ckpt = inspect_checkpoint(pre.load, pre.ckpt_step)
    args = runtime.parse_args([*argv, *inherit(argv, ckpt)], extra_args_provider=add_eval_args)
    cfg = EvalConfig.from_args(args).validate()
    if args.tensor_model_parallel_size > 1 or args.pipeline_model_parallel_size > 1:
        raise GMError("evaluation runs in one process: drop the tensor/pipeline parallel sizes")
    from megatron.core.tokenizers.utils.build_tokenizer import build_tokenizer

    tokenizer = build_tokenizer(args)
    check_architecture(args, ckpt, tokenizer.vocab_size)
    iters = iterations_to_run(pre.load, cfg.iterations, ckpt.iteration)
    for it in iters:
        if not (Path(pre.load) / f"iter_{it:07d}").is_dir():
            raise GMError(f"{pre.load}: no iteration {it} saved (iter_{it:07d} missing)")
    ref = None
    if cfg.ref:
        ref = build_reference(
            cfg.ref, tokenizer.tokenize, tokenizer.eod, args.seq_length, cfg.ref_samples, args.seed
        )
    prompts = (
        prompt_samples(cfg.prompts, tokenizer.tokenize, args.seq_length, cfg.prompts_max)
        if cfg.prompts
        else None
    )
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    single_process_env()
    runtime.initialize()
    if torch.distributed.get_world_size() > 1:
        raise GMError("evaluation runs in one process: start it without torchrun's --nproc-per-node > 1")
    session = runtime.build(args)
    fmt = SampleFormat.from_args(args, tokenizer.eod)
    return Prepared(args, cfg, session, tokenizer, fmt, iters, ref, prompts)


def run(p: Prepared) -> dict:
    """Evaluate every requested iteration (reloading the model between them); write the JSON."""
    from megatron.training.checkpointing import load_checkpoint

    args, cfg, vocab = p.args, p.cfg, p.tokenizer.vocab_size
    model = p.session.model[0]
    results, loaded = [], p.session.iteration
    for it in p.iterations:
        t0 = time.perf_counter()
        if it != loaded:
            args.ckpt_step = it
            load_checkpoint(p.session.model, None, None, strict=True)
            loaded = it
        row: dict = {"iteration": it}
        if p.reference is not None:
            ref = p.reference
            row["reference"] = reference_metrics(
                score_samples(model, ref.tokens, ref.mask, p.fmt, vocab, cfg.batch)
            )
        if p.prompts is not None and (not cfg.prompts_latest_only or it == p.iterations[-1]):
            row["prompts"] = prompt_metrics(
                score_samples(model, p.prompts[0], p.prompts[1], p.fmt, vocab, cfg.batch)
            )
        row["seconds"] = round(time.perf_counter() - t0, 3)
        results.append(row)
    out = {
        "load": str(args.load), "seq_length": args.seq_length, "results": results,
        "reference_file": cfg.ref, "reference_samples": len(p.reference) if p.reference is not None else 0,
        "prompts_file": cfg.prompts, "prompts_skipped": p.prompts[2] if p.prompts is not None else 0,
    }  # fmt: skip
    text = json.dumps(out, indent=2) + "\n"
    if cfg.output:
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cfg.output, text)
    else:
        sys.stdout.write(text)
    return out


def evaluate(argv: list[str]) -> dict:
    """prepare + run: the result dict (also written to --gm-eval-output, or printed)."""
    return run(prepare(argv))
