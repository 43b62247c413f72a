"""``install()``: plug group-level selection into Megatron's own training loop.

Megatron's ``training.py`` imports ``build_pretraining_data_loader`` by name, so we replace it there
(``megatron.training.training.build_pretraining_data_loader``). ``install`` also
  - adds the ``--gm-*`` group to every Megatron parse (``arguments.add_megatron_arguments``) and runs
    ``validate_gm_args`` after Megatron's ``validate_args`` (a GMError there prints one line, exit 2);
  - ends the run at its stage boundary through Megatron's own save-and-exit path
    (``training.checkpoint_and_decide_exit`` sees ``exit_interval`` = the boundary at that iteration);
  - skips Megatron's runtime ``make`` of the dataset helpers when the compiled module imports
    (``initialize._compile_dependencies``): the megatron-core wheel ships ``helpers_cpp`` but no
    Makefile, so the ``make`` fails and ``initialize_megatron`` exits 1 on every rank, with CUDA or not.

With ``--gm-selection`` the training split's loader walks a stage dataset: Megatron's GPTDataset over
the selected documents (one epoch: Megatron's document shuffle and packing), ordered by our
``SelectionSampler`` from the stage-relative consumed count. Without it, Megatron's loader is returned
untouched (wrapped only to record samples when ``--gm-record-samples`` is given).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys

import numpy as np

from megatron_gm.dist import get_logger, setup_logging
from megatron_gm.errors import GMError
from megatron_gm.megatron import eval_hook
from megatron_gm.megatron.args import add_gm_args, check_data_inputs, load_stage_selection, validate_gm_args
from megatron_gm.megatron.signals import chain_worker_init

_installed: dict = {}
log = get_logger(__name__)


def install(cpu_shim: bool | None = None) -> None:
    """Patch Megatron (idempotent). ``cpu_shim``: None = activate it when CUDA is unavailable."""
    from megatron_gm.procs import die_with_launcher

    die_with_launcher()  # no worker outlives a killed torchrun
    if cpu_shim is None or cpu_shim:
        from megatron_gm.megatron import cpu_shim as shim

        shim.activate()  # idempotent, and a no-op with CUDA
    if _installed:
        return
    from megatron.training import arguments, training

    _installed["add_megatron_arguments"] = arguments.add_megatron_arguments
    _installed["validate_args"] = arguments.validate_args
    _installed["loader"] = training.build_pretraining_data_loader
    _installed["exit"] = training.checkpoint_and_decide_exit
    from megatron.training import initialize

    _installed["compile"] = initialize._compile_dependencies

    @functools.wraps(arguments.add_megatron_arguments)
    def add_megatron_arguments(parser):
        return add_gm_args(_installed["add_megatron_arguments"](parser))

    @functools.wraps(arguments.validate_args)
    def validate_args(args, defaults={}):  # noqa: B006 - Megatron's signature
        setup_logging(getattr(args, "log_level", "INFO"))  # --log-level, on every rank
        run_gm_validation(args, check_inputs)  # before Megatron's checks and its argument dump
        out = _installed["validate_args"](args, defaults)
        run_gm_validation(args)
        return out

    arguments.add_megatron_arguments = add_megatron_arguments
    arguments.validate_args = validate_args
    training.build_pretraining_data_loader = build_pretraining_data_loader
    training.checkpoint_and_decide_exit = checkpoint_and_decide_exit
    initialize._compile_dependencies = compile_dependencies


def compile_dependencies() -> None:
    """Megatron's ``_compile_dependencies`` without the ``make`` when the compiled helpers import.

    Megatron 0.19 runs ``make -C megatron/core/datasets`` on rank 0, then a barrier. A pip install has
    the built ``helpers_cpp`` and no Makefile, so that ``make`` fails; a source checkout without the
    built module still compiles it as before.
    """
    try:
        import megatron.core.datasets.helpers_cpp  # noqa: F401
    except ImportError:
        return _installed["compile"]()
    import torch

    torch.distributed.barrier()


def for_training(args) -> bool:
    """False for args parsed by ``runtime.parse_args`` (a stage loaded in-process needs no --save)."""
    return getattr(args, "gm_for_training", True)


def check_inputs(args) -> None:
    """Before Megatron starts: the data files, and (training) the lock of the --save folder."""
    from megatron_gm.procs import lock_output

    check_data_inputs(args)
    if getattr(args, "gm_selection", None):
        load_stage_selection(args)  # whole and made for --data-path (validate_gm_args uses it after)
    if for_training(args) and getattr(args, "save", None):
        lock_output(args.save, "checkpoints (--save)")


def run_gm_validation(args, check=None) -> None:
    """``check(args)`` (default validate_gm_args) with a one-line error and exit code 2, no traceback.

    Every rank checks (the checks only read files); the first rank of each node prints, so on one node
    the line appears once, and a node that sees other files than the first one still says why.
    """
    try:
        if check is None:
            validate_gm_args(args, for_training=for_training(args))
        else:
            check(args)
    except GMError as e:
        fail(e)


def fail(error: GMError, every_rank: bool = False) -> None:
    """Print ``error: ...`` on the node's first rank (a lone process counts as one; ``every_rank``: on
    every rank) and exit 2."""
    if every_rank or int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))) == 0:
        print(f"error: {error}", file=sys.stderr, flush=True)
    sys.exit(2)


# -- stage boundary ---------------------------------------------------------------------------


def checkpoint_and_decide_exit(*args, **kwargs):
    """Megatron's save-and-exit decision, plus: save and exit at the end of this stage."""
    from megatron.training import get_args

    margs = get_args()
    iteration = kwargs["iteration"] if "iteration" in kwargs else args[3]
    eval_hook.evaluate(kwargs["model"] if "model" in kwargs else args[0], iteration)
    end = getattr(margs, "gm_stage_end_iter", None)
    if end is None or iteration != end or end >= margs.train_iters:
        return _installed["exit"](*args, **kwargs)
    saved = margs.exit_interval
    margs.exit_interval = iteration  # Megatron saves (unless it just did) and exits at this iteration
    try:
        return _installed["exit"](*args, **kwargs)
    finally:
        margs.exit_interval = saved


# -- data loader ------------------------------------------------------------------------------


def _is_train_split(dataset) -> bool:
    from megatron.core.datasets.utils import Split

    split = getattr(dataset, "split", None) or getattr(dataset, "index_split", None)
    return split == Split.train


def build_pretraining_data_loader(dataset, consumed_samples):
    """Megatron's loader for every split but a selected stage's training split (see module doc)."""
    from megatron.training import get_args

    args = get_args()
    loader = _build_loader(dataset, consumed_samples, args)
    if loader is not None:  # workers must die when this process ends them (megatron/signals.py)
        chain_worker_init(getattr(loader, "loader", loader), getattr(args, "exit_signal", None))
    return loader


def _build_loader(dataset, consumed_samples, args):
    original = _installed["loader"]
    if dataset is None or not _is_train_split(dataset):
        return original(dataset, consumed_samples)
    try:
        check_loaded_vocab(args)
    except GMError as e:
        fail(e, every_rank=True)
    selected = bool(getattr(args, "gm_selection", None))
    record = getattr(args, "gm_record_samples", None)
    staged = getattr(args, "gm_stage_end_iter", None) is not None
    if not (selected or record or staged):
        return original(dataset, consumed_samples)
    try:
        check_stage_ledger(args)
        if selected:
            stage_ds = build_stage_dataset(dataset, args)
            loader, sampler = stage_loader(stage_ds, args, consumed_samples)
        else:
            loader = original(dataset, consumed_samples)
            stage_ds, sampler = dataset, getattr(loader, "batch_sampler", None)
    except GMError as e:
        fail(e, every_rank=True)
    if record and sampler is not None and _should_record():
        return RecordingLoader(loader, sampler, stage_ds, args, consumed_samples, selected)
    return loader


LEDGER = "gm_stages.json"


def check_loaded_vocab(args) -> None:
    """Refuse a loaded checkpoint whose padded vocabulary differs from this run's (Megatron does not)."""
    from megatron_gm.megatron.checkpoint import TRACKER, inspect_checkpoint, padded_vocab_mismatch

    load = getattr(args, "load", None)
    if not load or not os.path.isfile(os.path.join(load, TRACKER)):
        return  # nothing was loaded (a first start)
    info = inspect_checkpoint(load, getattr(args, "ckpt_step", None))
    why = padded_vocab_mismatch(
        info.saved("padded_vocab_size"), getattr(args, "padded_vocab_size", None), args
    )
    if why:
        raise GMError(f"{info.path}: {why}")


def check_stage_ledger(args) -> None:
    """The loaded checkpoint must lie inside this stage, and a mid-stage resume must keep its data.

    ``{save}/gm_stages.json`` records, per stage, the selection digest, seed, batch size and range the
    stage began with; a resume past the stage's first iteration with other values is refused (its
    order would silently differ). Rank 0 writes it when the stage's loader is built.
    """
    import torch

    from megatron_gm.fs import atomic_write_text

    stage, it = args.gm_stage, args.iteration
    start = args.gm_stage_start_iter
    end = args.gm_stage_end_iter or args.train_iters
    if it < start:
        raise GMError(
            f"--gm-stage {stage} starts at iteration {start}, but the checkpoint in --load is at iteration {it}; "
            f"finish stage {stage - 1} first or point --load at its final checkpoint"
        )
    if it >= end and args.gm_stage_end_iter is not None:
        raise GMError(
            f"--gm-stage {stage} is already complete: the checkpoint in --load is at iteration {it}, the stage "
            f"ends at {end}; run --gm-stage {stage + 1}"
        )
    entry = {
        "selection": args.gm_selection,
        "selection_digest": args.gm_selection_digest,
        "seed": args.seed,
        "global_batch_size": args.global_batch_size,
        "start_iter": start,
        "end_iter": end,
    }
    ledger = {}
    if args.load and os.path.exists(os.path.join(args.load, LEDGER)):
        path = os.path.join(args.load, LEDGER)
        try:
            with open(path) as f:
                ledger = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise GMError(f"{path}: unreadable ({e}); restore it from the checkpoint folder's backup") from e
        before = ledger.get(str(stage))
        keys = ("selection_digest", "seed", "global_batch_size", "start_iter")
        if it > start and before and any(before.get(k) != entry[k] for k in keys):
            diff = ", ".join(
                f"{k} {before.get(k)!r} -> {entry[k]!r}" for k in keys if before.get(k) != entry[k]
            )
            raise GMError(
                f"{path}: stage {stage} began with other data ({diff}); resume it with the same --gm-selection, "
                "--seed and batch size, or restart the stage from its first checkpoint"
            )
    if args.save and (not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0):
        ledger[str(stage)] = entry
        os.makedirs(args.save, exist_ok=True)
        atomic_write_text(
            os.path.join(args.save, LEDGER), json.dumps(ledger, indent=2, sort_keys=True) + "\n"
        )


def stage_seed(seed: int, stage: int) -> int:
    """The stage dataset's shuffle seed, from (seed, stage); fits numpy's RandomState."""
    return int(np.random.SeedSequence([seed, stage]).generate_state(1)[0] % (2**31 - 1))


def build_stage_dataset(train_ds, args):
    """Megatron's GPTDataset over the selected documents of the training split (one epoch).

    Each rank builds it in memory (``path_to_cache=""``): Megatron's index cache is keyed without the
    document subset, and building in place needs no barrier across the ranks that hold a loader.
    """
    from megatron.core.datasets.gpt_dataset import GPTDataset
    from megatron.core.datasets.utils import Split

    if not isinstance(train_ds, GPTDataset):
        raise GMError(
            f"--gm-selection needs Megatron's GPTDataset for the training split, got {type(train_ds).__name__}; "
            "use one --data-path prefix"
        )
    docs, _ = load_stage_selection(args)
    train_docs = np.asarray(train_ds.indices)
    kept = np.intersect1d(docs, train_docs, assume_unique=True).astype(np.int32)
    if kept.size == 0:
        raise GMError(
            f"{args.gm_selection}: none of its documents lies in the training split (--split {args.split})"
        )
    if kept.size < docs.size:
        log.info(
            f"megatron-gm: {docs.size - kept.size} of {docs.size} selected documents lie in the validation/test "
            "split and are not trained on"
        )
    config = dataclasses.replace(
        train_ds.config, random_seed=stage_seed(args.seed, args.gm_stage), path_to_cache=""
    )
    stage_ds = GPTDataset(train_ds.dataset, train_ds.dataset_path, kept, None, Split.train, config)
    if len(stage_ds) == 0:
        raise GMError(f"{args.gm_selection}: the selected documents hold fewer tokens than one sequence")
    log.info(
        f"megatron-gm: stage {args.gm_stage} trains on {kept.size} selected documents, {len(stage_ds)} samples a "
        f"pass, iterations {args.gm_stage_start_iter}..{args.gm_stage_end_iter or args.train_iters}"
    )
    return stage_ds


def stage_loader(stage_ds, args, consumed_samples: int):
    """A torch DataLoader over the stage dataset driven by the SelectionSampler."""
    import torch
    from megatron.core import mpu

    from megatron_gm.sampler import SamplerConfig, SelectionSampler

    start = args.gm_stage_start_iter * args.global_batch_size
    end_iter = args.gm_stage_end_iter or args.train_iters
    cfg = SamplerConfig(
        samples_per_pass=len(stage_ds),
        seed=args.seed,
        stage=args.gm_stage,
        micro_batch_size=args.micro_batch_size,
        data_parallel_size=mpu.get_data_parallel_world_size(),
        data_parallel_rank=mpu.get_data_parallel_rank(),
    )
    if consumed_samples < start:
        raise GMError(
            f"the loaded checkpoint is at sample {consumed_samples}, before stage {args.gm_stage} starts "
            f"(iteration {args.gm_stage_start_iter}); load the previous stage's final checkpoint"
        )
    sampler = SelectionSampler(
        cfg, consumed_samples - start, (end_iter - args.gm_stage_start_iter) * args.global_batch_size
    )
    loader = torch.utils.data.DataLoader(
        stage_ds,
        batch_sampler=sampler,
        num_workers=args.num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=args.num_workers > 0,
    )
    return loader, sampler


# -- recording --------------------------------------------------------------------------------


def _should_record() -> bool:
    """One recorder per data-parallel rank: TP rank 0 of the first pipeline stage, first loader only."""
    from megatron.core import mpu

    if _installed.get("recording"):
        return False
    if mpu.get_tensor_model_parallel_rank() != 0 or not mpu.is_pipeline_first_stage(ignore_virtual=True):
        return False
    _installed["recording"] = True
    return True


def sample_documents(dataset, index: int) -> list[int]:
    """Document ids (into the indexed dataset) that GPTDataset sample ``index`` is cut from."""
    s = int(dataset.shuffle_index[index])
    beg, end = int(dataset.sample_index[s][0]), int(dataset.sample_index[s + 1][0])
    return [int(d) for d in dataset.document_index[beg : end + 1]]


class RecordingLoader:
    """Iterates a loader and appends one JSON line per sample the training loop takes."""

    def __init__(self, loader, sampler, dataset, args, consumed_samples: int, selected: bool):
        from megatron.core import mpu
        from megatron.training import get_args  # noqa: F401 - megatron must be initialised here

        self.loader = loader
        self.sampler = sampler
        self.dataset = dataset
        self.path = args.gm_record_samples
        self.rank = int(os.environ.get("RANK", "0"))
        self.dp_rank = mpu.get_data_parallel_rank()
        self.stage = args.gm_stage
        self.gbs = args.global_batch_size
        self.selected = selected
        self.stage_start = args.gm_stage_start_iter * args.global_batch_size if selected else 0
        self.consumed = consumed_samples
        self.mbs = args.micro_batch_size
        self.dp = mpu.get_data_parallel_world_size()

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __iter__(self):
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            for j, batch in enumerate(self.loader):
                os.write(fd, self._lines(j).encode())
                yield batch
        finally:
            os.close(fd)

    def _lines(self, j: int) -> str:
        if self.selected:
            start, _ = self.sampler.batch_positions(j)
            indices = self.sampler.batch(j)
        else:  # Megatron's sampler: positions are sample indices from consumed_samples on
            start = self.consumed + j * self.mbs * self.dp + self.dp_rank * self.mbs
            indices = list(range(start, start + self.mbs))
        out = []
        for i, sample in enumerate(indices):
            pos = start + i
            global_sample = self.stage_start + pos
            out.append(
                json.dumps(
                    {
                        "rank": self.rank,
                        "dp_rank": self.dp_rank,
                        "stage": self.stage,
                        "step": global_sample // self.gbs,
                        "pos": pos,
                        "sample": int(sample),
                        "selected": self.selected,
                        "docs": sample_documents(self.dataset, int(sample)),
                    }
                )
            )
        return "\n".join(out) + "\n"
