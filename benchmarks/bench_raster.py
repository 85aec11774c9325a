"""Feature-mesh rasterizer (the DFR op): fast paths against the per-frame brute-force reference.

Scene: the anchor's depth of a sphere in front of a tilted plane at the mesh resolution, rendered into
F target cameras on a ring; features ``[V, C]``. Geometry (rasterize + plan, once per layer
resolution) and apply (the per-denoising-step gather) are timed separately. Full size is the DFR
issue's 16 frames x 64² x 320 channels; ``quick`` uses 4 x 24² x 32.

On CPU the fast path is the vectorised torch one (Triton only runs interpreted there, far slower than
torch, so it is not timed); GPU rows say "not measured: no GPU" when CUDA is unavailable.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable

import torch

from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.ops.feature_mesh import build_feature_mesh
from mvcustom_core.ops.raster import apply_plan, apply_plan_reference, plan_mesh_render

__all__ = ["run", "make_scene"]

REF_FRAMES = 2


def make_scene(frames: int, size: int, device: str = "cpu"):
    """Anchor feature mesh (sphere + plane depth) and ``frames`` target cameras, float32."""
    anchor = CameraSet.from_fov(look_at(torch.tensor([[0.0, 0.0, -3.0]]), torch.zeros(3)), fov_y_deg=50.0,
                                image_size=(size, size))
    dirs = anchor.ray_directions()[0]
    o = anchor.centers[0]
    b = dirs @ o
    disc = b * b - (o.dot(o) - 0.8**2)
    t = torch.where(disc > 0, -b - disc.clamp_min(0).sqrt(), (1.5 - o[2]) / dirs[..., 2])
    depth = t * (dirs @ anchor.forward[0])
    ang = torch.linspace(-0.5, 0.5, frames)
    eye = torch.stack([3 * torch.sin(ang), 0.3 * torch.cos(3 * ang), -3 * torch.cos(ang)], -1)
    targets = CameraSet.from_fov(look_at(eye, torch.zeros(3)), fov_y_deg=50.0, image_size=(size, size))
    mesh = build_feature_mesh(depth.to(device), anchor.to(device=device), max_rel_depth_jump=0.1)
    return mesh, targets.to(device=device)


def _time(fn: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None) -> float:
    fn()  # warm-up (allocator, kernel compilation)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(quick: bool) -> list[dict]:
    frames, size, channels = (4, 24, 32) if quick else (16, 64, 320)
    shape = f"{frames}x{size}²x{channels}"
    rows: list[dict] = []
    torch.manual_seed(0)

    mesh, cams = make_scene(frames, size)
    feats = mesh.vertex_features(torch.randn(channels, size, size))
    # The brute-force reference is linear in frames (a per-frame loop over every face x pixel): at full
    # size it is timed on REF_FRAMES frames and scaled, to keep the run short on a shared CPU.
    ref_frames = frames if quick else REF_FRAMES
    plan_ref = plan_mesh_render(mesh, cams[:ref_frames], impl="reference")
    ref_geom = _time(lambda: plan_mesh_render(mesh, cams[:ref_frames], impl="reference"), 1) * frames / ref_frames
    fast_geom = _time(lambda: plan_mesh_render(mesh, cams, impl="torch"), 3)
    plan = plan_mesh_render(mesh, cams, impl="torch")
    same = bool(torch.equal(plan_ref.vert_idx, plan.vert_idx[:ref_frames]))
    # The same box algorithm called frame by frame: separates batching from the algorithmic gain.
    looped = _time(lambda: [plan_mesh_render(mesh, cams[f : f + 1], impl="torch") for f in range(frames)], 3)
    ref_apply = _time(lambda: apply_plan_reference(plan, feats), 3)
    fast_apply = _time(lambda: apply_plan(plan, feats), 5)
    cov = float(plan.coverage.float().mean())
    rows.append({"name": "geometry (rasterize + plan), CPU", "shape": shape, "faces": mesh.num_faces,
                 "reference_ms": 1e3 * ref_geom, "fast_ms": 1e3 * fast_geom, "fast_impl": "torch",
                 "speedup": ref_geom / fast_geom, "goal": ">= 20x", "face_ids_equal": same, "coverage": cov,
                 "note": "" if quick else f"reference timed on {ref_frames} frames, scaled x{frames / ref_frames:g}"})
    rows.append({"name": "geometry, torch path called per frame, CPU", "shape": shape, "reference_ms": 1e3 * looped,
                 "fast_ms": 1e3 * fast_geom, "fast_impl": "torch", "speedup": looped / fast_geom,
                 "note": "reference column: the fast path looped over frames"})
    rows.append({"name": "apply (per-step gather), CPU", "shape": shape, "reference_ms": 1e3 * ref_apply,
                 "fast_ms": 1e3 * fast_apply, "fast_impl": "torch", "speedup": ref_apply / fast_apply})

    if not torch.cuda.is_available():
        for name in ("geometry (rasterize + plan), GPU triton", "apply (per-step gather), GPU"):
            rows.append({"name": name, "shape": shape, "note": "not measured: no GPU"})
        return rows

    sync = torch.cuda.synchronize
    mesh, cams = make_scene(frames, size, device="cuda")
    feats = mesh.vertex_features(torch.randn(channels, size, size, device="cuda"))
    ref_geom = _time(lambda: plan_mesh_render(mesh, cams, impl="reference"), 3, sync)
    for impl in ("torch", "triton"):
        fast_geom = _time(lambda: plan_mesh_render(mesh, cams, impl=impl), 10, sync)
        same = bool(torch.equal(plan_mesh_render(mesh, cams, impl=impl).vert_idx,
                                plan_mesh_render(mesh, cams, impl="reference").vert_idx))
        rows.append({"name": f"geometry (rasterize + plan), GPU {impl}", "shape": shape,
                     "reference_ms": 1e3 * ref_geom, "fast_ms": 1e3 * fast_geom, "fast_impl": impl,
                     "speedup": ref_geom / fast_geom, "goal": ">= 20x", "face_ids_equal": same})
    plan = plan_mesh_render(mesh, cams, impl="triton")
    ref_apply = _time(lambda: apply_plan_reference(plan, feats), 10, sync)
    fast_apply = _time(lambda: apply_plan(plan, feats), 20, sync)
    rows.append({"name": "apply (per-step gather), GPU", "shape": shape, "reference_ms": 1e3 * ref_apply,
                 "fast_ms": 1e3 * fast_apply, "fast_impl": "torch", "speedup": ref_apply / fast_apply})
    assert math.isfinite(fast_apply)
    return rows


if __name__ == "__main__":
    import sys

    from benchmarks.run_all import to_markdown

    print(to_markdown(run(quick="--quick" in sys.argv)))
