import logging
import os
import warnings

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*Transformer Engine.*")
warnings.filterwarnings("ignore", message=".*Apex.*")


@pytest.fixture(autouse=True)
def _package_logger_restored():
    """A tool or Megatron parse run in-process sets up the package logger (its own handler, no
    propagation to the root); undo that after each test so caplog sees the next test's lines."""
    log = logging.getLogger("megatron_gm")
    saved = log.level, log.propagate, list(log.handlers)
    yield
    log.handlers[:] = saved[2]
    log.setLevel(saved[0])
    log.propagate = saved[1]
