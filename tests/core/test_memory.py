"""Memory budget and chunk arithmetic (mvcustom_core.memory)."""

from __future__ import annotations

import pytest
import torch

from mvcustom_core.memory import (GiB, MAX_WORKSPACE, MIN_WORKSPACE, MemoryBudget, chunk_count, chunk_slices,
                                  default_budget, free_device_bytes, measure_allocations, measure_peak, resolve_budget, rows_per_chunk,
                                  workspace_bytes)


def test_rows_per_chunk_fits_the_workspace_and_keeps_multiples():
    assert rows_per_chunk(1000, 100, 10_000) == 100
    assert rows_per_chunk(1000, 100, 10**9) == 1000  # everything fits: one chunk
    assert rows_per_chunk(1000, 100, 50) == 1  # never zero rows
    assert rows_per_chunk(1000, 10, 1000, multiple=16) == 96  # whole multiples, rounded down
    assert rows_per_chunk(1000, 10, 50, multiple=16) == 16  # but at least one multiple
    assert rows_per_chunk(0, 10, 100) == 0


@pytest.mark.parametrize("total,rows", [(10, 3), (9, 3), (1, 5), (7, 1)])
def test_chunk_slices_cover_every_row_once_in_order(total, rows):
    slices = list(chunk_slices(total, rows))
    assert len(slices) == chunk_count(total, rows)
    assert [i for s in slices for i in range(total)[s]] == list(range(total))
    assert all(s.stop - s.start <= rows for s in slices)


def test_workspace_is_the_budget_left_clamped():
    assert workspace_bytes(None) == MAX_WORKSPACE
    assert workspace_bytes(MemoryBudget.of_gb(8), resident=8 * GiB - (100 << 20)) == 100 << 20
    assert workspace_bytes(MemoryBudget.of_gb(64)) == MAX_WORKSPACE
    assert workspace_bytes(1 << 20, resident=1 << 30) == MIN_WORKSPACE


def test_budgets_from_the_user_or_the_device():
    assert MemoryBudget.of_gb(1.5).bytes == int(1.5 * GiB) and MemoryBudget.of_gb(1.5).source == "set"
    with pytest.raises(ValueError, match="> 0"):
        MemoryBudget.of_gb(0)
    free, what = free_device_bytes("cpu")
    assert free > 0 and "RAM" in what
    budget = default_budget("cpu", fraction=0.5)
    assert 0 < budget.bytes <= free and "50%" in budget.source
    assert resolve_budget(None).source.endswith("RAM") and resolve_budget(2.0).bytes == 2 * GiB


def test_measure_peak_sees_the_largest_live_allocation():
    def work():
        a = torch.ones(1 << 20)  # 4 MiB
        b = torch.ones(1 << 21)  # 8 MiB, both live: 12 MiB
        del a, b
        return torch.ones(1 << 18).sum()  # 1 MiB

    result, peak = measure_peak(work)
    assert float(result) == 1 << 18
    assert 12 << 20 <= peak < 13 << 20


def test_measure_allocations_tells_the_peak_from_what_stays_allocated():
    cache = []

    def work():
        scratch = torch.ones(1 << 21)  # 8 MiB, freed on return
        cache.append(torch.ones(1 << 20))  # 4 MiB, kept by the caller's cache
        return scratch.sum()

    _, peak, kept = measure_allocations(work)
    assert 12 << 20 <= peak < 13 << 20
    assert 4 << 20 <= kept < (4 << 20) + 4096  # the cache entry and the 4-byte result
