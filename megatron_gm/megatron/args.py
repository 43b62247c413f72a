"""The ``--gm-*`` flags: one argument group added to Megatron's parser, and their validation.

``add_gm_args`` is an ``extra_args_provider`` (``parser -> parser``); ``extra_args_provider(other)``
chains it with another one. Each section of flags is a function in ``FLAG_SECTIONS``: a later phase adds
its flags by writing one more function and appending it there.

``validate_gm_args(args)`` runs after Megatron's own ``validate_args``: it derives the stage's first and
last iteration and, with ``--gm-selection``, loads the selection and checks it belongs to ``--data-path``.
Everything it refuses is a one-line ``GMError``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable

from megatron_gm.dist import add_log_level_arg, get_logger
from megatron_gm.errors import GMError
from megatron_gm.fs import sha256_files
from megatron_gm.megatron import eval_hook

GROUP_TITLE = "megatron-gm (Group-MATES data selection)"
log = get_logger(__name__)


def _stage_flags(group) -> None:
    group.add_argument(
        "--gm-selection",
        type=str,
        default=None,
        metavar="DIR",
        help="Selection artifact (folder with documents.npy + manifest.json) for this stage: train only on "
        "these documents of --data-path, for the stage's budget, in passes reshuffled from (seed, stage).",
    )
    group.add_argument(
        "--gm-stage", type=int, default=0, help="Index of the stage this run trains (0-based)."
    )
    group.add_argument(
        "--gm-stage-iters",
        type=str,
        default=None,
        metavar="N|B1,B2,...",
        help="Stage length in iterations (one number), or the iterations at which stages end (a comma list; "
        "the stage after the last boundary runs to --train-iters). The run saves and exits at its stage's end.",
    )
    group.add_argument(
        "--gm-record-samples",
        type=str,
        default=None,
        metavar="FILE",
        help="Append one JSON line per consumed training sample (rank, stage, position, sample, documents) "
        "to FILE, for tests and audits.",
    )
    group.add_argument(
        "--gm-data-fingerprint-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Refuse a selection whose manifest names another dataset fingerprint than --data-path's.",
    )
    group.add_argument(
        "--gm-verify-data",
        choices=("quick", "full", "off"),
        default="quick",
        help="Check every --data-path prefix before Megatron starts: 'quick' compares the .bin/.idx with their "
        "sidecar (sizes, first and last MiB, token ids within the vocabulary, tokenizer file hash); 'full' "
        "also rehashes every byte; 'off' skips it.",
    )


FLAG_SECTIONS: list[Callable] = [_stage_flags, eval_hook.add_eval_flags]


def add_gm_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``--gm-*`` group to Megatron's parser (once: calling it again is a no-op)."""
    if "--gm-selection" in parser._option_string_actions:
        return parser
    group = parser.add_argument_group(title=GROUP_TITLE)
    for section in FLAG_SECTIONS:
        section(group)
    add_log_level_arg(group)
    return parser


def extra_args_provider(other: Callable | None = None, for_training: bool = True) -> Callable:
    """An ``extra_args_provider`` adding our group after ``other`` (another provider, or None).

    ``for_training=False`` (in-process tools that only load a stage) marks the parsed args
    ``gm_for_training=False``: validation then asks for no ``--save`` and locks none. Training leaves the
    args without it (``loader.for_training`` reads a missing key as True), so the args a checkpoint saves
    are what they were before the mode travelled with the args."""

    def provider(parser):
        if other is not None:
            parser = other(parser)
        if not for_training:
            parser.set_defaults(gm_for_training=False)
        return add_gm_args(parser)

    return provider


@dataclasses.dataclass
class StagePlan:
    """Where stage ``stage`` starts and ends, in iterations (``end`` is exclusive, capped at train_iters)."""

    stage: int
    start: int
    end: int
    staged: bool  # whether --gm-stage-iters was given (the run must stop at ``end``)

    def validate(self, train_iters: int) -> None:
        if self.start >= train_iters:
            raise GMError(
                f"--gm-stage {self.stage} starts at iteration {self.start}, at or after --train-iters "
                f"{train_iters}; check --gm-stage-iters"
            )


def stage_plan(stage: int, stage_iters: str | None, train_iters: int) -> StagePlan:
    """Parse ``--gm-stage``/``--gm-stage-iters`` into the stage's iteration range."""
    if stage < 0:
        raise GMError(f"--gm-stage {stage}: must be 0 or more")
    if not stage_iters:
        if stage > 0:
            raise GMError(f"--gm-stage {stage} needs --gm-stage-iters to know where the stage starts")
        return StagePlan(stage, 0, train_iters, staged=False)
    try:
        values = [int(v) for v in stage_iters.split(",") if v.strip()]
    except ValueError:
        raise GMError(
            f"--gm-stage-iters {stage_iters!r}: give a number or a comma list of iterations"
        ) from None
    if not values or any(v <= 0 for v in values) or any(b <= a for a, b in zip(values, values[1:])):
        raise GMError(f"--gm-stage-iters {stage_iters!r}: iterations must be positive and increasing")
    if len(values) == 1 and "," not in stage_iters:
        start, end = stage * values[0], (stage + 1) * values[0]
    else:
        bounds = [0, *values, train_iters]
        if stage >= len(bounds) - 1:
            raise GMError(
                f"--gm-stage {stage}: --gm-stage-iters {stage_iters!r} defines {len(values) + 1} stages"
            )
        start, end = bounds[stage], bounds[stage + 1]
    plan = StagePlan(stage, start, min(end, train_iters), staged=True)
    plan.validate(train_iters)
    return plan


def data_prefix(args) -> str:
    """The one indexed-dataset prefix a selection refers to (``--data-path`` or ``--train-data-path``)."""
    paths = args.data_path or getattr(args, "train_data_path", None) or []
    prefixes = [p for p in paths if not is_number(p)]
    if len(prefixes) != 1:
        raise GMError(
            f"--gm-selection needs exactly one dataset prefix in --data-path, got {len(prefixes)}: "
            "a selection indexes the documents of one pool"
        )
    return prefixes[0]


def is_number(text: str) -> bool:
    """Whether a ``--data-path`` entry is a blend weight rather than a prefix."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def selection_digest(folder: str) -> str:
    """Hash of a selection's documents and manifest: names the stage dataset and guards resumes."""
    return sha256_files((b"", os.path.join(folder, name)) for name in ("documents.npy", "manifest.json"))[:16]


def load_stage_selection(args):
    """Load ``--gm-selection`` and check it against ``--data-path``; returns (documents, manifest)."""
    from megatron_gm.data.indexed import load_dataset_info
    from megatron_gm.data.selection import load_selection

    prefix = data_prefix(args)
    info = load_dataset_info(prefix)
    if args.gm_data_fingerprint_check:
        _check_idx_matches(prefix, info.num_docs)
    docs, manifest = load_selection(
        args.gm_selection,
        dataset_fingerprint=info.fingerprint if args.gm_data_fingerprint_check else None,
        num_docs=info.num_docs,
    )
    return docs, manifest


def dataset_prefixes(args) -> list[str]:
    """Every indexed-dataset prefix the run reads (--data-path and the per-split paths, weights dropped)."""
    out: list[str] = []
    for name in ("data_path", "train_data_path", "valid_data_path", "test_data_path"):
        for p in getattr(args, name, None) or []:
            if not is_number(p) and p not in out:
                out.append(p)
    return out


def check_data_inputs(args) -> None:
    """Before Megatron starts: each dataset's files are whole and match its sidecar and the tokenizer.

    Without a sidecar (a dataset not written by our tools) only the .idx/.bin agreement is checked.
    """
    from megatron_gm.data.indexed import (
        check_dataset_files,
        check_tokenizer,
        load_dataset_info,
        read_idx_layout,
        sidecar_path,
    )

    mode = getattr(args, "gm_verify_data", "quick")
    if mode == "off" or getattr(args, "mock_data", False):
        return
    null = getattr(args, "tokenizer_type", None) == "NullTokenizer"
    for prefix in dataset_prefixes(args):
        if not sidecar_path(prefix).exists():
            read_idx_layout(prefix)
            continue
        info = load_dataset_info(prefix, check=False)
        check_dataset_files(info, full=mode == "full")
        check_tokenizer(info, getattr(args, "tokenizer_model", None), args.vocab_size if null else None)


def _check_idx_matches(prefix: str, num_docs: int) -> None:
    """The sidecar must describe these .idx/.bin files (a cheap check: the document count)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    try:
        have = len(IndexedDataset(prefix, mmap=True).document_indices) - 1
    except (OSError, ValueError, AssertionError) as e:
        raise GMError(
            f"{prefix}.idx: unreadable indexed dataset ({e}); rerun tools/preprocess_data.py"
        ) from e
    if have != num_docs:
        raise GMError(
            f"{prefix}.gm.json: describes {num_docs} documents but {prefix}.idx holds {have}; "
            "the sidecar is stale, rerun tools/preprocess_data.py"
        )


def validate_gm_args(args, for_training: bool = True) -> None:
    """Check the ``--gm-*`` flags against Megatron's (after its validate_args); set derived fields.

    ``for_training=False`` (in-process tools that only load a stage) does not ask for ``--save``.
    """
    staged = bool(args.gm_stage_iters)
    if (staged or args.gm_selection) and args.train_iters is None:
        raise GMError("--gm-stage-iters/--gm-selection need iteration-based training: pass --train-iters")
    if (staged or args.gm_selection) and args.rampup_batch_size is not None:
        raise GMError("--gm-stage-iters/--gm-selection need a fixed batch size: drop --rampup-batch-size")
    if staged and getattr(args, "phase_transition_iterations", None):
        raise GMError("--gm-stage-iters replaces --phase-transition-iterations: pass only one of them")
    if staged and for_training and not args.save:
        raise GMError(
            "--gm-stage-iters needs --save: a stage ends by saving the checkpoint the next one loads"
        )
    plan = stage_plan(args.gm_stage, args.gm_stage_iters, args.train_iters or 0) if args.train_iters else None
    args.gm_stage_start_iter = plan.start if plan else 0
    args.gm_stage_end_iter = plan.end if plan and plan.staged else None
    args.gm_selection_digest = None
    if args.gm_selection:
        if args.dataloader_type not in (None, "single"):
            raise GMError(
                f"--gm-selection drives the 'single' data loader; drop --dataloader-type {args.dataloader_type}"
            )
        if args.mock_data:
            raise GMError("--gm-selection selects documents of --data-path; drop --mock-data")
        _, manifest = load_stage_selection(args)
        if manifest.iteration is not None and manifest.iteration != args.gm_stage_start_iter:
            log.warning(
                f"megatron-gm: warning: {args.gm_selection} was made from the checkpoint at iteration "
                f"{manifest.iteration}, but stage {args.gm_stage} starts at iteration {args.gm_stage_start_iter}"
            )
        args.gm_selection = os.path.abspath(args.gm_selection)
        args.gm_selection_digest = selection_digest(args.gm_selection)
    if args.gm_record_samples:
        args.gm_record_samples = os.path.abspath(args.gm_record_samples)
    if for_training:
        eval_hook.validate(args)
