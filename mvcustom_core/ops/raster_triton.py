"""Triton kernel for the z-test of :mod:`mvcustom_core.ops.raster` (the ``impl="triton"`` path).

One program per (frame, tile of ``TILE_H x TILE_W`` target pixels) walks the faces in chunks of
``BLOCK_F``; a chunk whose faces' candidate boxes all miss the tile is skipped (anchor-mesh faces come
in raster order, so neighbouring faces land near each other and most chunks are skipped). For the
rest it evaluates the same edge functions as :func:`~mvcustom_core.ops.raster.edge_barycentrics`, in
the same order, on a ``[BLOCK_F, TILE]`` block and keeps, per pixel, the minimum of the packed key
``bits(float32 depth) << 31 | face`` — the nearest face, ties to the lowest face index (a positive
float's bits order like the float). The kernel writes only the winning face per pixel; depth and
barycentrics are then recomputed by the shared torch code, so they match the other paths exactly
wherever the face ids do.

The kernel asks for IEEE-rounded division (``tl.math.div_rn``) and launches with
``enable_fp_fusion=False`` so the GPU compiler does not contract ``a*b - c*d`` into FMAs: each float32
operation then rounds as torch's elementwise kernels do, which is what makes the face ids equal to
the reference's, ties included. On the CPU interpreter (``TRITON_INTERPRET=1``) the arithmetic is
numpy float32 and bit-identical to torch; on a GPU this is by construction, not yet measured.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from mvcustom_core.ops.raster import INSIDE_EPS, RasterError, ScreenFaces

__all__ = ["winners_triton", "TILE_H", "TILE_W", "BLOCK_F"]

TILE_H, TILE_W, BLOCK_F = 8, 16, 32
_EMPTY = (1 << 63) - 1


@triton.jit
def _zbuffer_kernel(
    geom_ptr,  # [F, T, 10] float32: u0 u1 u2 v0 v1 v2 z0 z1 z2 area
    bbox_ptr,  # [F, T, 4] int32: i0 i1 j0 j1 inclusive; empty (i0 > i1) for dropped faces
    out_ptr,  # [F, H*W] int64 packed keys
    T, H, W, tiles_w, inside_eps,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_F: tl.constexpr,
):
    frame = tl.program_id(0)
    tile = tl.program_id(1)
    ti0 = (tile // tiles_w) * TILE_H
    tj0 = (tile % tiles_w) * TILE_W
    p = tl.arange(0, TILE_H * TILE_W)
    row = ti0 + p // TILE_W
    col = tj0 + p % TILE_W
    pix_ok = (row < H) & (col < W)
    pu = col.to(tl.float32) + 0.5
    pv = row.to(tl.float32) + 0.5
    best = tl.full([TILE_H * TILE_W], 0x7FFFFFFFFFFFFFFF, tl.int64)
    big = tl.full([BLOCK_F, TILE_H * TILE_W], 0x7FFFFFFFFFFFFFFF, tl.int64)

    for f0 in range(0, T, BLOCK_F):
        face = f0 + tl.arange(0, BLOCK_F)
        fmask = face < T
        b = bbox_ptr + (frame * T + face) * 4
        i0 = tl.load(b + 0, mask=fmask, other=1)
        i1 = tl.load(b + 1, mask=fmask, other=0)
        j0 = tl.load(b + 2, mask=fmask, other=1)
        j1 = tl.load(b + 3, mask=fmask, other=0)
        hits = (i0 <= i1) & (i0 < ti0 + TILE_H) & (i1 >= ti0) & (j0 < tj0 + TILE_W) & (j1 >= tj0)
        if tl.sum(hits.to(tl.int32), axis=0) > 0:
            g = geom_ptr + (frame * T + face) * 10
            u0 = tl.load(g + 0, mask=fmask, other=0.0)[:, None]
            u1 = tl.load(g + 1, mask=fmask, other=0.0)[:, None]
            u2 = tl.load(g + 2, mask=fmask, other=0.0)[:, None]
            v0 = tl.load(g + 3, mask=fmask, other=0.0)[:, None]
            v1 = tl.load(g + 4, mask=fmask, other=0.0)[:, None]
            v2 = tl.load(g + 5, mask=fmask, other=0.0)[:, None]
            z0 = tl.load(g + 6, mask=fmask, other=1.0)[:, None]
            z1 = tl.load(g + 7, mask=fmask, other=1.0)[:, None]
            z2 = tl.load(g + 8, mask=fmask, other=1.0)[:, None]
            area = tl.load(g + 9, mask=fmask, other=1.0)[:, None]
            x = pu[None, :]
            y = pv[None, :]
            # Same expressions, same order as raster.edge_barycentrics; IEEE divisions (div_rn) and no
            # FMA contraction (enable_fp_fusion=False at launch) keep the float32 results torch's.
            w0 = tl.math.div_rn((u1 - x) * (v2 - y) - (v1 - y) * (u2 - x), area)
            w1 = tl.math.div_rn((u2 - x) * (v0 - y) - (v2 - y) * (u0 - x), area)
            w2 = tl.math.div_rn((u0 - x) * (v1 - y) - (v0 - y) * (u1 - x), area)
            inside = (w0 >= -inside_eps) & (w1 >= -inside_eps) & (w2 >= -inside_eps)
            inside = inside & hits[:, None] & pix_ok[None, :]
            w0 = tl.maximum(w0, 0.0)
            w1 = tl.maximum(w1, 0.0)
            w2 = tl.maximum(w2, 0.0)
            total = w0 + w1 + w2
            qsum = tl.math.div_rn(w0, z0) + tl.math.div_rn(w1, z1) + tl.math.div_rn(w2, z2)
            depth = tl.math.div_rn(total, qsum)
            bits = depth.to(tl.int32, bitcast=True).to(tl.int64)
            key = (bits << 31) | face[:, None].to(tl.int64)
            # A non-finite depth (0/0 or x/0 on a face seen edge-on) is no hit, as in edge_barycentrics;
            # NaN fails both tests, +inf the second (a literal: the largest finite float32).
            key = tl.where(inside & (depth == depth) & (depth <= 3.4028234663852886e38), key, big)
            best = tl.minimum(best, tl.min(key, axis=0))

    tl.store(out_ptr + frame * H * W + row * W + col, best, mask=pix_ok)


def winners_triton(sf: ScreenFaces) -> Tensor:
    """Winning face per target pixel, ``[F, H, W]`` long (-1 where empty), by the Triton kernel.

    Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (slow; tests only).
    """
    nf, t = sf.keep.shape
    h, w = sf.image_size
    if t >= 1 << 31:
        raise RasterError(f"faces: the triton path supports fewer than 2**31 faces, got {t}")
    device = sf.uv.device
    if device.type != "cuda" and not _interpreting():
        raise RasterError("impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 on CPU); use impl='torch'")
    uv = sf.uv.float()
    geom = torch.cat([uv[..., 0], uv[..., 1], sf.z.float(), sf.area.float()[..., None]], dim=-1).contiguous()
    bbox = sf.bbox.to(torch.int32).clone()
    bbox[..., 0] = torch.where(sf.keep, bbox[..., 0], bbox[..., 1] + 1)  # dropped face: empty box
    bbox = bbox.contiguous()
    keys = torch.empty(nf, h * w, dtype=torch.int64, device=device)
    if nf == 0 or h * w == 0:
        return keys.new_full((nf, h, w), -1)
    tiles_w = triton.cdiv(w, TILE_W)
    grid = (nf, triton.cdiv(h, TILE_H) * tiles_w)
    _zbuffer_kernel[grid](geom, bbox, keys, t, h, w, tiles_w, INSIDE_EPS,
                          TILE_H=TILE_H, TILE_W=TILE_W, BLOCK_F=BLOCK_F, enable_fp_fusion=False)
    winner = torch.where(keys == _EMPTY, -1, keys & ((1 << 31) - 1))
    return winner.reshape(nf, h, w)


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"
