"""Memory budget and chunk arithmetic shared by every chunked op of the pack.

A :class:`MemoryBudget` is the number of bytes one run may hold at once on its device, beyond the weights
already placed there. By default it is derived from what the device has free when the run starts:

* CUDA: ``torch.cuda.mem_get_info`` free bytes plus what torch's caching allocator holds but does not use
  (``memory_reserved − memory_allocated``: reusable without asking the driver);
* CPU: ``MemAvailable`` of ``/proc/meminfo`` (the kernel's estimate of memory obtainable without swapping),
  or the free physical pages where that file does not exist.

Only :data:`DEFAULT_FRACTION` of it is used, leaving room for the allocator's fragmentation and for other
processes. A user may set the budget instead (``MemoryBudget.of_gb``).

Chunked ops (FeatureNeRF rays, DFR apply, CLC, dense attention, VAE decode) size their chunks so that one
chunk's scratch stays within a *workspace* (:func:`workspace_bytes`): the part of the budget left after what
must be resident for the whole run, capped at :data:`MAX_WORKSPACE` — larger chunks do not run faster (the
per-chunk matrix products are already thousands of rows tall) and would only raise the peak.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

__all__ = ["MemoryBudget", "MemoryBudgetError", "free_device_bytes", "default_budget", "resolve_budget",
           "workspace_bytes", "measure_peak", "measure_allocations", "chunk_count", "rows_per_chunk", "chunk_slices",
           "dtype_bytes", "GiB", "DEFAULT_FRACTION", "MAX_WORKSPACE", "MIN_WORKSPACE"]

GiB = 1 << 30
DEFAULT_FRACTION = 0.85
MAX_WORKSPACE = 512 << 20  # 512 MiB: per-chunk scratch beyond this buys no speed
MIN_WORKSPACE = 16 << 20


class MemoryBudgetError(ValueError):
    """A run whose estimated peak does not fit its memory budget (raised before any work starts)."""


@dataclass(frozen=True)
class MemoryBudget:
    """Bytes a run may hold at once on ``device`` (weights already placed there excluded).

    Attributes:
        bytes: the budget.
        device: the device it applies to (``"cpu"``, ``"cuda:0"``, …).
        source: where the number came from (for error messages): ``"set"`` or a description of the query.
    """

    bytes: int
    device: str
    source: str

    @classmethod
    def of_gb(cls, gigabytes: float, device: torch.device | str = "cpu") -> "MemoryBudget":
        """A budget set by the user, in GiB."""
        if not gigabytes > 0:
            raise ValueError(f"memory budget must be > 0 GB, got {gigabytes}")
        return cls(int(gigabytes * GiB), str(torch.device(device)), "set")

    @property
    def gb(self) -> float:
        return self.bytes / GiB


def free_device_bytes(device: torch.device | str) -> tuple[int, str]:
    """``(bytes, description)`` free on ``device`` now (see the module docstring for the sources)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached), f"free memory of {device}"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available RAM"
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")), "free RAM"


def default_budget(device: torch.device | str = "cpu", fraction: float = DEFAULT_FRACTION) -> MemoryBudget:
    """``fraction`` of what ``device`` has free now."""
    free, what = free_device_bytes(device)
    return MemoryBudget(int(free * fraction), str(torch.device(device)), f"{fraction:.0%} of the {what}")


def resolve_budget(gigabytes: float | None, device: torch.device | str = "cpu") -> MemoryBudget:
    """The user's budget in GiB, or the default for ``device`` when ``gigabytes`` is None or 0."""
    return default_budget(device) if not gigabytes else MemoryBudget.of_gb(gigabytes, device)


def workspace_bytes(budget: MemoryBudget | int | None, resident: int = 0) -> int:
    """Scratch one chunk may use: ``budget − resident`` clamped to [MIN_WORKSPACE, MAX_WORKSPACE].

    ``None`` (no budget given: library calls, tests) gives :data:`MAX_WORKSPACE`.
    """
    if budget is None:
        return MAX_WORKSPACE
    total = budget.bytes if isinstance(budget, MemoryBudget) else int(budget)
    return max(MIN_WORKSPACE, min(MAX_WORKSPACE, total - int(resident)))


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def rows_per_chunk(total: int, bytes_per_row: int, workspace: int, *, multiple: int = 1) -> int:
    """Rows processed at once so that ``rows · bytes_per_row <= workspace`` (at least ``multiple``, at most ``total``).

    Args:
        total: rows to process.
        bytes_per_row: scratch one row needs.
        workspace: bytes available to one chunk.
        multiple: chunks are whole multiples of this (e.g. the rays of one frame), unless all rows fit.

    Example:
        >>> rows_per_chunk(1000, 1 << 20, 64 << 20)
        64
    """
    if total <= 0:
        return 0
    rows = max(1, int(workspace) // max(1, int(bytes_per_row)))
    if rows >= total:
        return total
    return max(multiple, rows // multiple * multiple)


def chunk_count(total: int, rows: int) -> int:
    return 0 if total <= 0 else -(-total // max(1, rows))


def chunk_slices(total: int, rows: int) -> Iterator[slice]:
    """Consecutive slices of at most ``rows`` covering ``range(total)``."""
    step = max(1, int(rows))
    for start in range(0, total, step):
        yield slice(start, min(total, start + step))


def measure_peak(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[Any, int]:
    """``(fn(), peak)``: the most bytes allocated on ``device`` by ``fn`` and live at once, above what was
    allocated before the call (:func:`measure_allocations`)."""
    result, peak, _kept = measure_allocations(fn, device)
    return result, peak


def measure_allocations(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[Any, int, int]:
    """``(fn(), peak, kept)``: the most bytes allocated on ``device`` by ``fn`` and live at once, and the bytes it
    allocated that are still live when it returns (its result, caches it filled), both above what was allocated
    before the call.

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset. CPU: torch keeps no allocator statistics, so the
    allocations and frees of torch's CPU allocator are read from the memory events of ``torch.profiler``
    (``profile_memory=True``, op scratch buffers included) and summed in time order; -1 for both when this torch's
    profiler does not expose its raw events. Slower than ``fn()`` alone: measure in an untimed run.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        peak, kept = torch.cuda.max_memory_allocated(device) - base, torch.cuda.memory_allocated(device) - base
        return result, int(peak), int(kept)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    try:
        events = prof.profiler.kineto_results.events()
    except AttributeError:
        return result, -1, -1
    live = peak = 0
    for _, nbytes in sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"):
        live += nbytes
        peak = max(peak, live)
    return result, peak, live
