"""Per-method summary in the layout of the paper's Table 2, written as CSV and Markdown (atomically).

Columns: the paper's four (CPA ↑, multi-view consistency ↓ [DreamSim], identity ↓ [DreamSim], text
alignment ↑ [CLIP-S]) then the pack's extras (# COLMAP points as in Table A3, mean pose errors,
reprojection PSNR/SSIM, CLIP/DINO similarities as in Table A1). Each cell is the mean over a method's
sets with the standard deviation in brackets, as the paper prints ``0.735 (±0.10)``; sets where a metric
was not computed (NaN) are left out of that cell, and a cell with no value prints ``–``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

from mvcustom_core.cameras.formats._common import atomic_write_text

__all__ = ["TABLE_COLUMNS", "summarize", "format_markdown", "format_csv", "format_sets_csv", "write_report"]

TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("cpa", "CPA ↑"),
    ("mv_dreamsim", "MV consistency ↓"),
    ("identity_dreamsim", "Identity ↓"),
    ("text_clip_s", "Text align ↑"),
    ("colmap_points", "# COLMAP points ↑"),
    ("colmap_points_target", "# points @ targets ↑"),
    ("target_reproj_px", "Target reproj. (px) ↓"),
    ("rot_err_deg", "Rot. err (°) ↓"),
    ("trans_err", "Trans. err ↓"),
    ("reproj_psnr", "Reproj. PSNR ↑"),
    ("reproj_ssim", "Reproj. SSIM ↑"),
    ("mv_clip", "MV CLIP-I ↑"),
    ("mv_dino", "MV DINO ↑"),
    ("identity_clip", "Identity CLIP-I ↑"),
    ("identity_dino", "Identity DINO ↑"),
)
"""(metric key, header) pairs; the first four are the paper's Table 2."""


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return math.nan, math.nan, 0
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))  # population std over the sets
    return mean, std, len(vals)


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group per-set rows by ``"method"`` (first-seen order): ``{"method", "sets", key: (mean, std, n)}``."""
    methods: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        methods.setdefault(str(row["method"]), []).append(row)
    out = []
    for method, group in methods.items():
        summary: dict[str, Any] = {"method": method, "sets": len(group)}
        for key, _ in TABLE_COLUMNS:
            summary[key] = _mean_std([r.get(key, math.nan) for r in group])
        out.append(summary)
    return out


def _cell(stat: tuple[float, float, int], key: str) -> str:
    mean, std, n = stat
    if n == 0:
        return "–"
    digits = 2 if key in ("colmap_points", "colmap_points_target", "target_reproj_px", "reproj_psnr",
                          "rot_err_deg") else 3
    return f"{mean:.{digits}f}" if n == 1 else f"{mean:.{digits}f} (±{std:.2f})"


def format_markdown(summary: Sequence[dict[str, Any]]) -> str:
    """A Markdown table, one row per method, plus a line on how cells are made."""
    head = ["Method"] + [h for _, h in TABLE_COLUMNS] + ["Sets"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        cells = [s["method"]] + [_cell(s[k], k) for k, _ in TABLE_COLUMNS] + [str(s["sets"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Mean over each method's sets (± population std); – = not computed. CPA: fraction of frames "
                 "within the rotation and translation thresholds after Sim(3) alignment, 0 when SfM fails.")
    return "\n".join(lines) + "\n"


def format_csv(summary: Sequence[dict[str, Any]]) -> str:
    """Machine-readable summary: ``method, sets, <key>_mean, <key>_std, <key>_n`` for every column."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "sets"] + [f"{k}_{s}" for k, _ in TABLE_COLUMNS for s in ("mean", "std", "n")])
    for s in summary:
        writer.writerow([s["method"], s["sets"]] + [_num(x) for k, _ in TABLE_COLUMNS for x in s[k]])
    return buf.getvalue()


def format_sets_csv(rows: Sequence[dict[str, Any]]) -> str:
    """One line per set with every numeric metric (NaN empty)."""
    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float))})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "set"] + keys)
    for r in rows:
        writer.writerow([r["method"], r["set"]] + [_num(r.get(k, math.nan)) for k in keys])
    return buf.getvalue()


def _num(x: Any) -> str:
    x = float(x)
    return "" if math.isnan(x) else repr(int(x)) if x.is_integer() and abs(x) < 1e15 else f"{x:.6g}"


def write_report(rows: Sequence[dict[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    """Write ``table.md``, ``table.csv``, ``sets.csv`` and ``results.json`` into ``out_dir`` (atomically).

    Returns:
        ``{"markdown", "csv", "sets_csv", "json"}`` paths.
    """
    out = Path(out_dir)
    summary = summarize(rows)
    clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]
    return {
        "markdown": atomic_write_text(out / "table.md", format_markdown(summary)),
        "csv": atomic_write_text(out / "table.csv", format_csv(summary)),
        "sets_csv": atomic_write_text(out / "sets.csv", format_sets_csv(rows)),
        "json": atomic_write_text(out / "results.json", json.dumps(clean, indent=2, allow_nan=False) + "\n"),
    }
