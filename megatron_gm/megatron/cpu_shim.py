"""Run Megatron's own training code on a machine without CUDA (tests, CPU quickstart).

``activate()`` does nothing when CUDA is available. Otherwise it applies the patches below, each
answering a place where megatron-core 0.19 (``megatron/training`` and ``megatron/core``) assumes a GPU.
The model runs on CPU in float32 or bf16 over a gloo process group; ``CPU_FLAGS`` are the Megatron
flags such a run needs (``with_cpu_flags`` adds the missing ones to an argv).

Patches (reason -> the Megatron file that needs it):
  1. ``torch.cuda.current_device`` returns 0, ``set_device`` is a no-op: device arguments everywhere
     (core/distributed/param_and_grad_buffer.py, core/tensor_parallel/layers.py, training/training.py).
  2. ``synchronize``, ``empty_cache``, memory counters are no-ops or 0 (training/training.py, timers).
  3. Dummy ``Stream``/``Event``/``current_stream``/``stream``: training.py creates a side stream,
     core/distributed/ and core/pipeline_parallel/ wait on streams.
  4. ``torch.cuda.get_rng_state/set_rng_state/manual_seed`` and the model-parallel RNG tracker's
     ``_get_cuda_rng_state/_set_cuda_rng_state`` use the CPU generator
     (core/tensor_parallel/random.py; checkpoints save and restore these states).
  5. A TorchFunctionMode maps ``device="cuda"``/``cuda:N``/ints, ``Tensor.cuda()``, ``Tensor.to(cuda)``
     and ``pin_memory`` to the CPU, and makes ``Tensor.type()`` report ``torch.cuda.*`` (the gradient
     clipping in core/optimizer/clip_grads.py and the optimizers assert on that string).
  6. ``initialize_megatron(allow_no_cuda=True)``: training.py's pretrain() asserts CUDA otherwise
     (training/initialize.py).
  7. (Now in ``loader.install``, with or without CUDA: skip the ``make`` of the dataset helpers
     when the wheel's compiled module imports; training/initialize.py ``_compile_dependencies``.)
  8. ``torch.cuda.device_count()`` is 1 only inside Megatron's distributed init and seeding, which skip
     model-parallel groups and the RNG tracker on 0 devices (training/initialize.py). A permanent fake
     count makes torch believe CUDA exists elsewhere and breaks the optimizer step.
  9. A fake sm_90 device (``get_device_properties``/``get_device_capability``) and
     ``CUDA_DEVICE_MAX_CONNECTIONS=1``: validate_args asks for the GPU architecture when TP > 1
     (training/arguments.py, training/utils/common_utils.py).
 10. DataLoader iteration runs under ``torch.random.fork_rng``: on CPU the data loader's seed draw
     would consume the generator the model's dropout uses, so a resumed run would not be bit-exact
     (training/training.py builds the iterator after loading the checkpoint's RNG state).

With ``GM_CPU_SHIM_LOG=<path>`` every Megatron file:line that hit a CUDA path is counted and written to
``<path>.rank<R>`` at exit, so a Megatron upgrade shows what moved.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import sys
import types
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode

CPU_FLAGS: list[tuple[str, ...]] = [
    ("--distributed-backend", "gloo"),
    ("--transformer-impl", "local"),
    ("--use-cpu-initialization",),
    ("--no-persist-layer-norm",),
    ("--no-gradient-accumulation-fusion",),
    ("--no-masked-softmax-fusion",),
    ("--no-bias-gelu-fusion",),
    ("--no-bias-dropout-fusion",),
    ("--no-rope-fusion",),
]

_state: dict = {"active": False, "mode": None, "sites": Counter(), "log": None}


def is_active() -> bool:
    return _state["active"]


def with_cpu_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` plus each CPU flag it does not set already; returns (new argv, added flags)."""
    present = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    added: list[str] = []
    for flag in CPU_FLAGS:
        if flag[0] not in present:
            added.extend(flag)
    return argv + added, added


def activate(log_path: str | None = None) -> bool:
    """Apply the CPU patches unless CUDA is available; returns whether the shim is active."""
    if torch.cuda.is_available():
        return False
    if _state["active"]:
        return True
    _state["log"] = log_path or os.environ.get("GM_CPU_SHIM_LOG") or None
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    _patch_torch_cuda()
    _patch_dataloader_rng()
    mode = _CudaToCpu()
    mode.__enter__()  # stays active for the life of the process (thread-local: the main thread)
    _state["mode"] = mode
    _patch_megatron()
    if _state["log"]:
        atexit.register(_write_sites)
    _state["active"] = True
    return True


# -- 1-4, 9: torch.cuda --------------------------------------------------------------------------


class _DummyStream:
    def __init__(self, *args, **kwargs):
        self.device = torch.device("cpu")

    def wait_stream(self, stream) -> None: ...
    def wait_event(self, event) -> None: ...
    def synchronize(self) -> None: ...
    def query(self) -> bool:
        return True

    def record_event(self, event=None):
        return event or _DummyEvent()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None: ...


class _DummyEvent:
    def __init__(self, *args, **kwargs): ...
    def record(self, stream=None) -> None: ...
    def wait(self, stream=None) -> None: ...
    def synchronize(self) -> None: ...
    def query(self) -> bool:
        return True

    def elapsed_time(self, other) -> float:
        return 0.0


_FAKE_PROPS = types.SimpleNamespace(
    name="cpu (megatron_gm cpu_shim)", major=9, minor=0, total_memory=0, multi_processor_count=1
)


@contextlib.contextmanager
def _fake_device_count():
    """8: one fake device while Megatron sets up process groups and seeds."""
    real = torch.cuda.device_count
    torch.cuda.device_count = lambda: 1
    try:
        yield
    finally:
        torch.cuda.device_count = real


def _patch_torch_cuda() -> None:
    c = torch.cuda
    c.current_device = lambda: 0
    c.set_device = lambda device: None
    c.synchronize = lambda device=None: None
    c.empty_cache = lambda: None
    for name in ("memory_allocated", "max_memory_allocated", "memory_reserved", "max_memory_reserved"):
        setattr(c, name, lambda device=None: 0)
    c.reset_peak_memory_stats = lambda device=None: None
    c.memory_stats = lambda device=None: {}
    c.Stream = _DummyStream
    c.Event = _DummyEvent
    c.current_stream = lambda device=None: _DummyStream()
    c.default_stream = lambda device=None: _DummyStream()
    c.stream = lambda stream=None: contextlib.nullcontext()
    c.get_rng_state = lambda device="cuda": torch.get_rng_state()
    c.set_rng_state = lambda new_state, device="cuda": torch.set_rng_state(new_state)
    # torch.manual_seed itself calls torch.cuda.manual_seed_all: seed the CPU generator directly.
    c.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    c.manual_seed_all = lambda seed: torch.default_generator.manual_seed(int(seed))
    c.get_device_properties = lambda device=None: _FAKE_PROPS
    c.get_device_capability = lambda device=None: (9, 0)


# -- 5: cuda devices -> cpu -------------------------------------------------------------------


def _is_cuda(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)


class _CudaToCpu(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda or func is torch.Tensor.pin_memory:
            self._note()
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if "cuda" not in name else name
        if "device" in kwargs and _is_cuda(kwargs["device"]):
            kwargs = {**kwargs, "device": "cpu"}
            self._note()
        if kwargs.get("pin_memory"):
            kwargs = {**kwargs, "pin_memory": False}
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], "cpu", *args[2:])
            self._note()
        return func(*args, **kwargs)

    @staticmethod
    def _note() -> None:
        if not _state["log"]:
            return
        frame = sys._getframe(2)
        while frame is not None:
            path = frame.f_code.co_filename
            if "/megatron/" in path and "/megatron_gm/" not in path:
                _state["sites"][f"{path.split('/megatron/', 1)[1]}:{frame.f_lineno}"] += 1
                return
            frame = frame.f_back


def _write_sites() -> None:
    rank = os.environ.get("RANK", "0")
    lines = [f"{n}\tmegatron/{site}" for site, n in sorted(_state["sites"].items())]
    with open(f"{_state['log']}.rank{rank}", "w") as f:
        f.write("\n".join(lines) + "\n")


# -- 10: data loader RNG ----------------------------------------------------------------------


def _patch_dataloader_rng() -> None:
    from torch.utils.data import DataLoader

    original = DataLoader.__iter__

    @functools.wraps(original)
    def iter_without_rng_draw(self):
        with torch.random.fork_rng(devices=[]):
            return original(self)

    DataLoader.__iter__ = iter_without_rng_draw


# -- 4, 6, 7, 8: megatron --------------------------------------------------------------------


def _patch_megatron() -> None:
    from megatron.core.tensor_parallel import random as mp_random
    from megatron.training import initialize, training

    mp_random._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: torch.get_rng_state()
    mp_random._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(
        new_state
    )

    init = initialize.initialize_megatron

    @functools.wraps(init)
    def initialize_megatron(*args, **kwargs):
        kwargs["allow_no_cuda"] = True
        return init(*args, **kwargs)

    training.initialize_megatron = initialize_megatron
    initialize.initialize_megatron = initialize_megatron

    for name in ("_initialize_distributed", "_set_random_seed"):
        fn = getattr(initialize, name)
        setattr(initialize, name, _with_fake_device_count(fn))


def _with_fake_device_count(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _fake_device_count():
            return fn(*args, **kwargs)

    return wrapper
