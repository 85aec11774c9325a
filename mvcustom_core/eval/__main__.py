"""``python -m mvcustom_core.eval <folder> --out <dir>``: run the evaluation protocol over generated sets.

The folder layout is described in :mod:`mvcustom_core.eval.protocol` and ``docs/evaluation.md``.
"""

from __future__ import annotations

import argparse
import sys

from mvcustom_core.eval.errors import EvalInputError
from mvcustom_core.eval.protocol import EvalOptions, evaluate_folder
from mvcustom_core.eval.sfm import SfmOptions
from mvcustom_core.eval.table import write_report

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mvcustom_core.eval",
                                description="Score generated multi-view sets (pose accuracy, reprojection "
                                            "consistency, learned metrics) and write a Table-2 style report.")
    p.add_argument("folder", help="<root>/<method>/<set>/ (frames *.png + transforms.json ...), a method folder, "
                                  "or one set folder")
    p.add_argument("--out", required=True, help="output folder for table.md, table.csv, sets.csv, results.json")
    p.add_argument("--no-pose", action="store_true", help="skip structure-from-motion (CPA, pose errors, # points)")
    p.add_argument("--no-reprojection", action="store_true", help="skip reprojection consistency")
    p.add_argument("--rot-threshold", type=float, default=EvalOptions.rot_threshold_deg, help="CPA rotation "
                   "threshold in degrees (default %(default)s)")
    p.add_argument("--trans-threshold", type=float, default=EvalOptions.trans_threshold, help="CPA translation "
                   "threshold as a fraction of the path's mean radius (default %(default)s)")
    p.add_argument("--sfm-threads", type=int, default=1, help="COLMAP threads (default %(default)s)")
    p.add_argument("--estimate-intrinsics", action="store_true", help="let COLMAP estimate the focal length "
                   "instead of using the target intrinsics")
    p.add_argument("--window", type=int, default=1, help="reprojection neighbour distance (default %(default)s)")
    p.add_argument("--clip", help="local CLIP model folder (config.json, model.safetensors, tokenizer files)")
    p.add_argument("--dino", help="local DINO / DINOv2 model folder")
    p.add_argument("--dreamsim", help="local DreamSim checkpoint folder (needs the dreamsim package)")
    p.add_argument("--device", default="cpu", help="device of the learned models (default %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = EvalOptions(
        pose_accuracy=not args.no_pose,
        sfm=SfmOptions(known_intrinsics=not args.estimate_intrinsics, num_threads=args.sfm_threads),
        rot_threshold_deg=args.rot_threshold, trans_threshold=args.trans_threshold,
        reprojection=not args.no_reprojection, window=args.window,
        clip_path=args.clip, dino_path=args.dino, dreamsim_path=args.dreamsim, device=args.device)

    def progress(done: int, total: int, name: str) -> None:
        print(f"[{done}/{total}] {name}", file=sys.stderr, flush=True)

    try:
        rows = evaluate_folder(args.folder, options, progress=progress)
    except EvalInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    reasons = {f"{k}: {v}" for r in rows for k, v in r["unavailable"].items()}
    for reason in sorted(reasons):
        print(f"not computed - {reason}", file=sys.stderr)
    paths = write_report(rows, args.out)
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
