"""The probe engine on Megatron: the model, optimizer and scheduler pretrain() built and loaded.

One probe step is Megatron's own training step on one sample (``forward_backward_func`` with the GPT
``forward_step``, so pipeline and tensor parallelism work; ``optimizer.step()`` clips and updates;
the scheduler advances by the pretraining's global batch, as one iteration would), with one difference:
the gradients are finalized WITHOUT the data-parallel all-reduce, because each data-parallel group
probes its own trajectory. The tensor/pipeline parts of Megatron's ``finalize_model_grads`` (tied
embedding across the first and last stage, layer norms under sequence parallelism) still run, and the
plain optimizer reduces its clipping norm over the model-parallel group only.

The reference loss is a forward-only pass in eval mode over the reference samples; the last pipeline
stage sums token losses in float64 and broadcasts the mean to the other stages. A reference set in the
natural layout runs as one pass per length bucket (``reference.length_buckets``), each at its own
sequence length: right padding under causal attention leaves every counted loss as it is. The reference
micro-batches are built and moved to the device once, not per pass.

Without tensor, pipeline or context parallelism (the usual oracle layout: data-parallel groups only) a
micro-batch is read straight from the iterator (``direct_batch``) instead of through Megatron's
``get_batch``, whose TP broadcasts are then five collectives on a one-rank group per micro-batch and which
rebuilds the transformer config from args on each call. The tensors the model sees are the same, so the
labels are bit for bit those of ``get_batch`` (``tests/test_oracle_throughput.py``); ``direct=False``
forces Megatron's path.
"""

from __future__ import annotations

import contextlib
import random
import time
from functools import partial

import numpy as np
import torch

from megatron_gm.data.reference import ReferenceSet, length_buckets, pad_multiple
from megatron_gm.errors import GMError
from megatron_gm.megatron.samples import SampleFormat, document_sample, to_batch
from megatron_gm.oracle.snapshot import StateSnapshot


@contextlib.contextmanager
def override_arg(args, name: str, value):
    """Set ``args.<name>`` for one pass: Megatron's get_batch sizes its TP broadcast by ``args.seq_length``
    and ``args.micro_batch_size``."""
    saved = getattr(args, name)
    setattr(args, name, value)
    try:
        yield
    finally:
        setattr(args, name, saved)


def check_optimizer(optimizer) -> list:
    """The sub-optimizers; refuse the distributed optimizer (its state is sharded over data parallelism)."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    subs = list(getattr(optimizer, "chained_optimizers", [optimizer]))
    if any(isinstance(o, DistributedOptimizer) for o in subs):
        raise GMError(
            "the distributed optimizer shards Adam state over data-parallel ranks, which probe different "
            "trajectories; drop --use-distributed-optimizer for oracle collection"
        )
    return subs


BATCH_KEYS = ("tokens", "position_ids", "attention_mask", "labels", "loss_mask")


def direct_batches_supported(args) -> bool:
    """True when ``get_batch`` would only broadcast in a one-rank TP group and pass the batch through."""
    from megatron.core import mpu

    return (
        mpu.get_tensor_model_parallel_world_size() == 1
        and mpu.get_pipeline_model_parallel_world_size() == 1
        and mpu.get_context_parallel_world_size() == 1
        and not args.dataloader_inter_document_masking
        and not args.hybrid_context_parallel
        and not (args.mtp_num_layers or 0)
    )


def direct_batch(data_iterator) -> dict:
    """The next micro-batch on this device, as ``gpt.get_batch`` returns it without model parallelism."""
    batch = next(data_iterator)
    return {
        k: (None if batch.get(k) is None else batch[k].to(_device(), non_blocking=True)) for k in BATCH_KEYS
    }


def _read_batch(data_iterator, model, direct: bool) -> dict:
    from megatron.core.utils import get_attr_wrapped_model

    from megatron_gm.megatron import gpt

    if direct:
        return direct_batch(data_iterator)
    return gpt.get_batch(data_iterator, get_attr_wrapped_model(model, "vp_stage"))


def _model_output(model, b: dict):
    return model(
        b["tokens"], b["position_ids"], b["attention_mask"], labels=b["labels"], loss_mask=b["loss_mask"]
    )


def train_forward_step(data_iterator, model, direct: bool = False):
    """``gpt.forward_step`` for an unpacked probe sample; ``direct``: read it with ``direct_batch``."""
    from megatron_gm.megatron import gpt

    if not direct:
        return gpt.forward_step(data_iterator, model)
    b = direct_batch(data_iterator)
    return _model_output(model, b), partial(gpt.loss_func, b["loss_mask"], model=model)


def _ref_loss_func(loss_mask: torch.Tensor, output: torch.Tensor):
    losses = output.view(-1).double()
    mask = loss_mask.view(-1).double()
    total, count = (losses * mask).sum(), mask.sum()
    return total.float(), count.to(torch.int), {"ref": torch.stack([total, count]).detach()}


def ref_forward_step(data_iterator, model, direct: bool = False):
    """GPT forward on a reference micro-batch; the report is [sum of token losses, token count] (float64)."""
    b = _read_batch(data_iterator, model, direct)
    return _model_output(model, b), partial(_ref_loss_func, b["loss_mask"])


def _ref_rows_loss_func(loss_mask: torch.Tensor, output: torch.Tensor):
    losses = output.view(loss_mask.shape).double()
    mask = loss_mask.double()
    rows = torch.stack([(losses * mask).sum(dim=1), mask.sum(dim=1)], dim=1)  # [mb, 2]
    return rows[:, 0].sum().float(), mask.sum().to(torch.int), {"rows": rows.detach()}


def ref_rows_forward_step(data_iterator, model, direct: bool = False):
    """As ``ref_forward_step``, reporting [sum of token losses, token count] per row (float64)."""
    b = _read_batch(data_iterator, model, direct)
    return _model_output(model, b), partial(_ref_rows_loss_func, b["loss_mask"])


class MegatronEngine:
    def __init__(
        self,
        session,
        dataset,
        fmt: SampleFormat,
        reference: ReferenceSet,
        *,
        ref_micro_batch_size: int,
        scheduler_increment: int,
        direct: bool = True,
    ):
        from megatron.core.pipeline_parallel import get_forward_backward_func
        from megatron.core.utils import get_model_config

        args = session.args
        if args.overlap_grad_reduce or args.overlap_param_gather:
            raise GMError(
                "drop --overlap-grad-reduce/--overlap-param-gather: a probe step must not all-reduce over DP"
            )
        self.args, self.model = args, session.model
        self.optimizer, self.scheduler = session.optimizer, session.scheduler
        self.dataset, self.fmt, self.increment = dataset, fmt, int(scheduler_increment)
        subs = check_optimizer(self.optimizer)
        self.config = get_model_config(self.model[0])
        self.config.finalize_model_grads_func = finalize_grads_without_dp
        self.config.grad_scale_func = self.optimizer.scale_loss
        self.forward_backward = get_forward_backward_func()
        torch_opts = [o.optimizer for o in subs if getattr(o, "optimizer", None) is not None]
        params = [p for m in self.model for p in m.parameters()]
        params += [p for o in torch_opts for g in o.param_groups for p in g["params"]]
        objects = [self.scheduler] + [
            o.grad_scaler for o in subs if getattr(o, "grad_scaler", None) is not None
        ]
        self.snapshot = StateSnapshot(params, torch_opts, objects)
        self.direct = direct and direct_batches_supported(args)  # False: Megatron's get_batch
        self.ref_mbs = max(1, min(ref_micro_batch_size, len(reference)))
        self.reference = reference
        self.ref_batches = self._reference_batches(reference)
        self.times = {"step": [0, 0.0], "ref": [0, 0.0]}

    def _reference_batches(self, ref: ReferenceSet) -> list[tuple[int, list[dict]]]:
        """(sequence length, batches) per length bucket; one bucket of seq_length for the packed layout."""
        a = self.args
        multiple = pad_multiple(
            a.tensor_model_parallel_size if a.sequence_parallel else 1, a.context_parallel_size
        )
        return [
            (L, [_on_device(to_batch(t, m, self.fmt)) for t, m in batches])
            for L, batches in length_buckets(ref, self.ref_mbs, multiple)
        ]

    def _iterator(self, batches: list[dict]):
        if len(self.model) > 1:  # virtual pipeline stages: one iterator per model chunk
            return [iter(batches) for _ in self.model]
        return iter(batches)

    # -- the engine protocol ------------------------------------------------------------------------

    def restore(self) -> None:
        self.snapshot.restore()

    def train_step(self, doc: int, seed: int) -> None:
        start = time.perf_counter()
        _seed_everything(seed)
        tokens, mask = document_sample(self.dataset, doc, self.fmt.seq_length)
        batch = to_batch(tokens, mask, self.fmt)
        with override_arg(self.args, "micro_batch_size", 1):
            self._step([batch], 1)
        self._tick("step", start)

    def _reference_pass(self, step_func) -> list[dict]:
        """Forward-only over every length bucket in eval mode; the schedule's reports (last stage only)."""
        for m in self.model:
            m.eval()
        reports = []
        try:
            for length, batches in self.ref_batches:
                with torch.no_grad(), override_arg(self.args, "micro_batch_size", self.ref_mbs):
                    with override_arg(self.args, "seq_length", length):
                        reports += self.forward_backward(
                            forward_step_func=partial(step_func, direct=self.direct),
                            data_iterator=self._iterator(batches),
                            model=self.model,
                            num_microbatches=len(batches),
                            seq_length=length,
                            micro_batch_size=self.ref_mbs,
                            forward_only=True,
                        )
        finally:
            for m in self.model:
                m.train()
        return reports

    def _from_last_stage(self, t: torch.Tensor) -> torch.Tensor:
        from megatron.core import mpu

        if mpu.get_pipeline_model_parallel_world_size() > 1:
            t = t.to(_device())
            torch.distributed.broadcast(
                t,
                src=mpu.get_pipeline_model_parallel_last_rank(),
                group=mpu.get_pipeline_model_parallel_group(),
            )
        return t.cpu()

    def reference_loss(self) -> float:
        from megatron.core import mpu

        start = time.perf_counter()
        reports = self._reference_pass(ref_forward_step)
        total = torch.zeros(2, dtype=torch.float64)
        if mpu.is_pipeline_last_stage(ignore_virtual=True):
            for r in reports:
                total += r["ref"].cpu()
        total = self._from_last_stage(total)
        self._tick("ref", start)
        return float(total[0] / total[1])

    def reference_example_losses(self) -> np.ndarray:
        """Per reference sample [n, 2] float64: (sum of its counted token losses, their count), in the
        reference set's order. Any subset's loss is its rows' sum over their count (label reliability)."""
        from megatron.core import mpu

        reports = self._reference_pass(ref_rows_forward_step)
        n, mb = len(self.reference), self.ref_mbs
        rows = torch.zeros(n, 2, dtype=torch.float64)
        if mpu.is_pipeline_last_stage(ignore_virtual=True):
            order = np.argsort(self.reference.sample_lengths, kind="stable")
            for k, r in enumerate(reports):
                idx = order[k * mb : (k + 1) * mb]
                rows[torch.from_numpy(idx)] = r["rows"].cpu()[: len(idx)]
        return self._from_last_stage(rows).numpy()

    # -- training steps -----------------------------------------------------------------------------

    def _step(self, batches: list[dict], num_microbatches: int, rerun_guard: bool = False) -> None:
        """zero grads, forward-backward, optimizer step, scheduler step.

        ``rerun_guard``: run inside Megatron's rerun state machine as train_step does (its gradient NaN
        check in the DP gradient sync asserts on that); it reduces over all ranks, so probe steps, whose
        data-parallel groups run independently, skip it (and the DP sync with it).
        """
        from megatron.core.rerun_state_machine import get_rerun_state_machine

        def forward_backward() -> None:
            for m in self.model:
                m.zero_grad_buffer()
            self.optimizer.zero_grad()
            self.forward_backward(
                forward_step_func=partial(train_forward_step, direct=self.direct and not rerun_guard),
                data_iterator=self._iterator(batches),
                model=self.model,
                num_microbatches=num_microbatches,
                seq_length=self.fmt.seq_length,
                micro_batch_size=self.args.micro_batch_size,
                forward_only=False,
            )

        if rerun_guard:
            machine = get_rerun_state_machine()
            while machine.should_run_forward_backward(None):
                forward_backward()
        else:
            forward_backward()
        ok, _, _ = self.optimizer.step()
        if ok:
            self.scheduler.step(increment=self.increment)

    def time_training_steps(self, n: int, micro_batch_size: int, num_microbatches: int, docs) -> float:
        """Seconds per pretraining-sized step (with the DP all-reduce), for comparison; restores after."""
        from megatron.core.distributed import finalize_model_grads

        batches = []
        for i in range(num_microbatches):
            rows = [
                document_sample(self.dataset, int(d), self.fmt.seq_length) for d in docs[i::num_microbatches]
            ]
            rows = rows[:micro_batch_size]
            batches.append(to_batch(np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]), self.fmt))
        self.config.finalize_model_grads_func = finalize_model_grads
        try:
            with override_arg(self.args, "micro_batch_size", micro_batch_size):
                self._step(batches, num_microbatches, rerun_guard=True)  # warm-up
                torch.distributed.barrier()
                start = time.perf_counter()
                for _ in range(n):
                    self._step(batches, num_microbatches, rerun_guard=True)
                torch.distributed.barrier()
                seconds = (time.perf_counter() - start) / n
        finally:
            self.config.finalize_model_grads_func = finalize_grads_without_dp
            self.restore()
        return seconds

    def _tick(self, name: str, start: float) -> None:
        self.times[name][0] += 1
        self.times[name][1] += time.perf_counter() - start

    def mean_time(self, name: str) -> float:
        n, s = self.times[name]
        return s / n if n else float("nan")


def _device():
    return (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )


def _on_device(batch: dict) -> dict:
    return {k: (None if v is None else v.to(_device())) for k, v in batch.items()}


def _seed_everything(seed: int) -> None:
    """Dropout RNG of a probe step from its own seed (per pipeline stage, as Megatron seeds them)."""
    from megatron.core import mpu, tensor_parallel
    from megatron.training import get_args

    args = get_args()
    s = seed + 100 * mpu.get_pipeline_model_parallel_rank()
    random.seed(s)
    torch.manual_seed(s)
    tensor_parallel.model_parallel_cuda_manual_seed(
        s, te_rng_tracker=args.te_rng_tracker, inference_rng_tracker=args.inference_rng_tracker
    )


def finalize_grads_without_dp(model, num_tokens=None, pg_collection=None, force_all_reduce=False):
    """Megatron's finalize_model_grads minus the data-parallel gradient all-reduce and token count sum."""
    from megatron.core import mpu
    from megatron.core.distributed import finalize_model_grads

    for chunk in model:
        chunk.finish_grad_sync = _no_dp_sync
    try:
        finalize_model_grads(model, num_tokens=None, pg_collection=pg_collection)
    finally:
        for chunk in model:
            del chunk.finish_grad_sync
    if num_tokens is not None:  # --calculate-per-token-loss: this sample's tokens, shared over the pipeline
        group = mpu.get_pipeline_model_parallel_group()
        torch.distributed.broadcast(num_tokens, src=mpu.get_pipeline_model_parallel_last_rank(), group=group)
        scale = 1.0 / max(int(num_tokens.item()), 1)
        for chunk in model:
            chunk.scale_gradients(scale)


def _no_dp_sync(*args, **kwargs) -> None:
    return None
