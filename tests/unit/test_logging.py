"""Library modules log through ``megatron_gm.dist.get_logger``: rank 0 only (unless ``EVERY_RANK``), shown
by ``setup_logging`` at the tool's ``--log-level``."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest

from megatron_gm.dist import EVERY_RANK, get_logger, rank, setup_logging, tool_logging
from megatron_gm.selection.quotas import largest_remainder_quotas

TINY = "4 of 5 clusters hold fewer than 1/ratio = 4 documents"  # sizes 3, 3, 2, 2 at ratio 0.25


@pytest.fixture
def launcher(monkeypatch):
    """Set this process's rank the way a launcher does (no torch.distributed group here)."""
    for var in ("RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"):
        monkeypatch.delenv(var, raising=False)
    return lambda var, value: monkeypatch.setenv(var, value)


def test_rank_comes_from_the_launcher(launcher):
    assert rank() == 0
    launcher("OMPI_COMM_WORLD_RANK", "3")
    assert rank() == 3
    launcher("RANK", "2")  # torchrun's wins over mpirun's
    assert rank() == 2


def test_a_library_warning_goes_through_logging_on_rank_0_only(caplog, launcher):
    with caplog.at_level(logging.WARNING, logger="megatron_gm.selection.quotas"):
        largest_remainder_quotas(np.array([10, 3, 3, 2, 2]), 0.25)
    assert [r.name for r in caplog.records] == ["megatron_gm.selection.quotas"]
    assert TINY in caplog.records[0].getMessage()
    caplog.clear()
    launcher("PMI_RANK", "1")
    with caplog.at_level(logging.WARNING, logger="megatron_gm.selection.quotas"):
        largest_remainder_quotas(np.array([10, 3, 3, 2, 2]), 0.25)
    assert caplog.records == []


def test_every_rank_lines_pass_on_other_ranks(caplog, launcher):
    launcher("RANK", "5")
    log = get_logger("megatron_gm.test_every_rank")
    with caplog.at_level(logging.INFO, logger="megatron_gm.test_every_rank"):
        log.info("only rank 0")
        log.warning("mine: %s", "damaged", extra=EVERY_RANK)
    assert [r.getMessage() for r in caplog.records] == ["mine: damaged"]


def test_setup_logging_prints_the_message_alone_at_the_level_given(launcher):
    out = io.StringIO()
    log = get_logger("megatron_gm.test_setup")
    setup_logging("INFO", out)
    log.debug("hidden")
    log.info("oracle: 3 of 4 shards")
    setup_logging("WARNING", out)  # replaces the first handler: each line once
    log.info("hidden too")
    log.warning("kept")
    assert out.getvalue() == "oracle: 3 of 4 shards\nkept\n"


def test_tool_logging_restores_the_package_logger():
    pkg = logging.getLogger("megatron_gm")
    before = pkg.level, pkg.propagate, list(pkg.handlers)
    out = io.StringIO()
    with tool_logging("INFO", out, "tool: %(message)s"):
        assert pkg.propagate is False  # Megatron's root handler would print every line twice
        get_logger("megatron_gm.test_tool").info("a line")
    assert out.getvalue() == "tool: a line\n"
    assert (pkg.level, pkg.propagate, list(pkg.handlers)) == before
