"""Run every benchmark of the pack in one process and write docs/performance.md.

Usage:
    python -m benchmarks.run_all            # full sizes (minutes on CPU; the real sizes on a GPU)
    python -m benchmarks.run_all --quick    # small sizes, seconds
    python -m benchmarks.run_all --only bench_fullsize   # one benchmark; the other sections of the record are kept

Sections of the record that were not run this time are kept as they were (each names the command, machine and
date that wrote it), and so are hand-written sections titled ``"<a benchmark's title>: …"`` (placed after it). Each benchmark module exposes ``run(quick: bool) -> list[dict]``; every row is one measurement with
a ``name`` and, where the goal is a ratio, the two sides measured side by side in the same run. The
machine (CPU model, GPU, torch version) heads the written record so figures are never compared across
machines by accident.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import os
import platform
import sys
import traceback
from pathlib import Path

import torch

from mvcustom_core.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
GOALS = """Goals (from the issues): the MVCustom sampler within 1.10x the time and 1.15x the peak memory of the plain
sampler (same UNet, steps, frames, measured side by side); on one H100, 16 views at 512², 50 DDIM steps, CFG 5 in
<= 30 s and <= 12 GB (the paper reports 131 s and 19.3 GB); the mesh render op's fast path >= 20x the per-frame
reference at 16 frames x 64² x 320 channels. GPU rows are measured only when CUDA is available; on a machine
without one they say so.
"""
BENCHMARKS = [
    ("Dense spatio-temporal attention", "benchmarks.bench_attention"),
    ("Feature-mesh rasterizer (DFR op)", "benchmarks.bench_raster"),
    ("FeatureNeRF and customization step", "benchmarks.bench_customization"),
    ("Built-in backbone training step", "benchmarks.bench_tiny_world_training"),
    ("MVCustom sampler overhead", "benchmarks.bench_sampler"),
    ("Pose-block render choices", "benchmarks.bench_pose_render"),
    ("Anchor depth: one pass vs two passes", "benchmarks.bench_one_pass"),
    ("Full-size job", "benchmarks.bench_fullsize"),
    ("Full-size job: peak memory measured at 16 x 512²", "benchmarks.bench_fullsize_memory"),
    ("Full-size job: the sampler's memory estimate", "benchmarks.bench_estimate"),
    ("Full-size job on a GPU", "benchmarks.bench_fullsize_cuda"),
    ("Load Checkpoint MODEL bridge: memory", "benchmarks.bench_bridge"),
]


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"CPU {cpu} ({os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}); "
            f"GPU {gpu}; torch {torch.__version__}; Python {platform.python_version()}")


def to_markdown(rows: list[dict]) -> str:
    if not rows:
        return "_no rows_\n"
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _previous_sections(path: Path) -> dict[str, str]:
    """``title -> text`` of the ``## `` sections of an existing record (none if there is no file)."""
    if not path.is_file():
        return {}
    sections, title = {}, None
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.startswith("## "):
            title = line[3:].strip()
            sections[title] = ""
        if title is not None:
            sections[title] += line
    return {t: text.rstrip("\n") + "\n" for t, text in sections.items()}


def section_order(sections: dict[str, str]) -> list[str]:
    """Titles in the record's order: the benchmarks' sections in :data:`BENCHMARKS` order, each group of them
    (``"X"``, ``"X: …"``) followed by the hand-written sections about it (titled ``"X: …"``, kept across runs),
    then any other kept section; every title once."""
    benchmarks = [title for title, _ in BENCHMARKS]
    order: list[str] = []
    for i, title in enumerate(benchmarks):
        order += [title] if title in sections else []
        head = title.split(":")[0]
        if i + 1 == len(benchmarks) or benchmarks[i + 1].split(":")[0] != head:  # the group's last benchmark
            order += [t for t in sections if t not in benchmarks and ":" in t and t.split(":")[0] == head]
    return order + [t for t in sections if t not in order]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.md")
    p.add_argument("--only", nargs="*", help="module names to run (default: all)")
    p.add_argument("--full", nargs="*", default=[], help="with --quick: module names still run at full size")
    args = p.parse_args(argv)

    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = {}
    for title, module in BENCHMARKS:
        if args.only and module.split(".")[-1] not in args.only:
            continue
        quick = args.quick and module.split(".")[-1] not in args.full
        print(f"== {title} ({module}, {'quick' if quick else 'full'} sizes)", flush=True)
        try:
            body = to_markdown(importlib.import_module(module).run(quick=quick))
        except ModuleNotFoundError as e:
            body = f"_not run: {e}_\n"
        except Exception:  # a failing benchmark must not hide the others' figures
            body = "_failed:_\n```\n" + traceback.format_exc() + "```\n"
        print(body, flush=True)
        sections[title] = (f"## {title}\n\n_{'quick' if quick else 'full'} sizes (`{module}`), {stamp}, "
                           f"{machine_description()}_\n\n{body}")

    command = "python -m benchmarks.run_all" + (" --quick" if args.quick else "") + \
        (" --full " + " ".join(args.full) if args.full else "") + (" --only " + " ".join(args.only) if args.only else "")
    head = (f"# Performance record\n\nLast written by `{command}` on {stamp}.\n\n{GOALS}\n")
    sections = {**_previous_sections(args.out), **sections}  # read now: another run may have written meanwhile
    atomic_write_text(args.out, head + "\n".join(sections[t] for t in section_order(sections)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
