"""DFRHook against analytic ground truth: a plane at constant anchor depth, anchor features linear in the anchor's
pixel coordinates. Rendering that plane into a target pixel must give the feature of the plane point it sees,
projected into the anchor (barycentric interpolation is exact for features affine on a planar triangle), on the
pixels whose point projects inside the anchor's pixel-centre hull; elsewhere, and on the anchor frame, the
features stay bit-identical. Checked at non-square layer sizes (latent and half latent), for both CFG branches
(each rendered from its own anchor row), for window calls that hold a subset of the frames, and across runs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.inference import AnchorGeometry, DFRHook

ANCHOR, Z0 = 1, 2.0
IMAGE = (96, 160)  # latent 12×20, half latent 6×10


def _cams() -> CameraSet:
    az = torch.tensor([-0.3, 0.0, 0.25, 0.12], dtype=torch.float64)
    eye = torch.stack([Z0 * torch.sin(az), torch.tensor([0.1, 0.0, -0.15, 0.2], dtype=torch.float64),
                       -Z0 * torch.cos(az)], dim=-1)
    return CameraSet.from_fov(look_at(eye, torch.zeros(3, dtype=torch.float64)), 50.0, IMAGE).to(dtype=torch.float32)


def _geometry() -> AnchorGeometry:
    """The plane through the origin facing the anchor: constant anchor z-depth Z0 (no culling, no guards)."""
    cams = _cams()
    return AnchorGeometry(ANCHOR, cams, torch.full(IMAGE, Z0))


def _coefficients(seed: int, channels: int = 3) -> torch.Tensor:
    """``[C, 3]``: feature c = k[c, 0]·u + k[c, 1]·v + k[c, 2] in anchor pixel coordinates."""
    return torch.randn(channels, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _linear_map(k: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return k[:, 0, None, None] * u + k[:, 1, None, None] * v + k[:, 2, None, None]


def _anchor_features(k: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[C, h, w]`` anchor feature map sampled at pixel centres."""
    v, u = torch.meshgrid(torch.arange(size[0], dtype=torch.float64) + 0.5,
                          torch.arange(size[1], dtype=torch.float64) + 0.5, indexing="ij")
    return _linear_map(k, u, v)


def _analytic(cams: CameraSet, frame: int, size: tuple[int, int], k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact DFR of the plane into ``frame`` at ``size``: features ``[C, h, w]`` and hull mask ``[h, w]`` (margin 1e-2)."""
    c64 = cams.to(dtype=torch.float64)
    target = c64[frame].with_image_size(size)
    anchor = c64[ANCHOR].with_image_size(size)
    d = target.ray_directions()[0]  # [h, w, 3]
    o = target.centers[0]
    n = anchor.forward[0]
    t = (n @ (anchor.centers[0] + Z0 * n - o)) / (d @ n)  # ray-plane intersection
    uv, _ = anchor.project((o + t[..., None] * d).reshape(1, -1, 3))
    u, v = uv[0, :, 0].reshape(size), uv[0, :, 1].reshape(size)
    h, w = size
    inside = (u > 0.5 + 1e-2) & (u < w - 0.5 - 1e-2) & (v > 0.5 + 1e-2) & (v < h - 0.5 - 1e-2)
    outside = (u < 0.5 - 1e-2) | (u > w - 0.5 + 1e-2) | (v < 0.5 - 1e-2) | (v > h - 0.5 + 1e-2)
    return _linear_map(k, u, v), inside, outside


def _check(out: torch.Tensor, before: torch.Tensor, frames: list[int], size, ks: list[torch.Tensor], cams) -> None:
    """``out``/``before``: ``[N·nf, C, h, w]`` branch-major; branch b's anchor has coefficients ``ks[b]``."""
    nf = len(frames)
    seen_covered = 0
    for b, k in enumerate(ks):
        for r, frame in enumerate(frames):
            row, pre = out[b * nf + r], before[b * nf + r]
            if frame == ANCHOR:
                assert torch.equal(row, pre), "the anchor frame is never replaced"
                continue
            expected, inside, outside = _analytic(cams, frame, size, k)
            changed = (row != pre).any(dim=0)
            assert not changed[outside].any(), f"frame {frame}: features replaced outside the anchor's hull"
            assert inside.any()
            torch.testing.assert_close(row[:, inside].double(), expected[:, inside], rtol=0, atol=1e-4)
            seen_covered += int(inside.sum())
    assert seen_covered > 0


class _Net(nn.Module):
    """A model with one hookable layer (identity), standing in for the UNet."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _features(ks: list[torch.Tensor], frames: list[int], size, seed: int) -> torch.Tensor:
    """``[N·nf, C, h, w]``: noise for every frame, the anchor rows replaced by the branch's linear map."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for k in ks:
        for frame in frames:
            rows.append(_anchor_features(k, size).float() if frame == ANCHOR
                        else torch.randn(k.shape[0], *size, generator=g))
    return torch.stack(rows)


@pytest.mark.parametrize("size", [(12, 20), (6, 10)])
def test_batched_cfg_branches_render_their_own_anchor_at_non_square_sizes(size):
    geo, cams = _geometry(), _cams()
    hook = DFRHook(geo, ["layer"], steps=2)
    hook.step = 1
    ks = [_coefficients(0), _coefficients(1)]  # uncond, cond
    frames = list(range(cams.num_frames))
    feats = _features(ks, frames, size, seed=2)
    before = feats.clone()
    out = hook.fn("layer", 1, feats)
    assert torch.equal(feats, before), "the caller's features are not modified in place"
    _check(out, before, frames, size, ks, cams)
    assert hook.fn("layer", 2, feats) is None  # steps i >= K are untouched


def test_frames_in_chunks_of_the_workspace_give_the_same_features(monkeypatch):
    """A workspace of one frame (and of three) renders chunk by chunk: bit-identical to one chunk of all frames."""
    import mvcustom_core.inference.dfr as dfr

    calls = []
    render = dfr.apply_plan
    monkeypatch.setattr(dfr, "apply_plan", lambda plan, vert: calls.append(plan.vert_idx.shape[0]) or render(plan, vert))
    geo, cams = _geometry(), _cams()
    ks, size, frames = [_coefficients(8), _coefficients(9)], (12, 20), [0, 1, 2, 3]
    feats = _features(ks, frames, size, seed=10)
    whole = DFRHook(geo, ["layer"], steps=1).fn("layer", 0, feats)
    per_frame = feats[0].numel() * 2 * (4 + 2 * 4)  # one frame: both branches' float32 render and blend
    for frames_per_chunk in (1, 3):
        hook = DFRHook(geo, ["layer"], steps=1)
        hook.workspace = frames_per_chunk * per_frame
        hook.record = []
        calls.clear()
        assert torch.equal(hook.fn("layer", 0, feats), whole)
        assert calls == ([1, 1, 1, 1] if frames_per_chunk == 1 else [3, 1])
        assert hook.record[0][3].shape == (4, *size)


def test_window_calls_reuse_the_anchor_of_the_steps_first_call():
    geo, cams = _geometry(), _cams()
    hook = DFRHook(geo, ["layer"], steps=1)
    ks = [_coefficients(3), _coefficients(4)]
    size = (12, 20)
    for frames in ([0, 1, 2], [2, 3]):  # the second window holds no anchor: its features come from the first
        hook.frames = torch.tensor(frames)
        feats = _features(ks, frames, size, seed=5)
        _check(hook.fn("layer", 0, feats), feats, frames, size, ks, cams)


def test_sequential_cfg_branches_each_render_their_own_anchor():
    geo, cams = _geometry(), _cams()
    hook = DFRHook(geo, ["layer"], steps=1)
    size, frames = (12, 20), [0, 1, 2, 3]
    for branch, seed in (("uncond", 6), ("cond", 7)):
        hook.branch = branch
        k = _coefficients(seed)
        feats = _features([k], frames, size, seed=seed)
        _check(hook.fn("layer", 0, feats), feats, frames, size, [k], cams)


def test_anchor_features_of_one_run_do_not_leak_into_the_next():
    """Two sampling runs with the same hook (K = 1: both replace at step 0 only): the second run must render its
    own anchor features, not the ones cached during the first run's step 0."""
    geo, cams = _geometry(), _cams()
    hook, net = DFRHook(geo, ["layer"], steps=1), _Net()
    size, frames = (12, 20), [0, 1, 2, 3]
    for run, seed in enumerate((8, 9)):
        k = _coefficients(seed)
        feats = _features([k], frames, size, seed=seed)
        hook.branch, hook.step = "cond", 0
        with hook.installed(net):
            out = net(feats)
        _check(out, feats, frames, size, [k], cams)


def test_the_step_cache_keeps_the_anchor_rows_not_the_layers_features():
    """The anchor features cached for the step's later calls are a copy of the anchor rows: a view would keep the
    hooked layer's features of every frame and branch allocated until the next step (a UNet frees them after the
    layer)."""
    from mvcustom_core.memory import measure_allocations

    geo = _geometry()
    size, frames = (12, 20), list(range(_cams().num_frames))
    feats = _features([_coefficients(0), _coefficients(1)], frames, size, seed=3)
    geo.plan(size)  # the mesh and the render plan are kept for later steps by design: built outside the measurement
    hook = DFRHook(geo, ["layer"], steps=2)
    out, _peak, kept = measure_allocations(lambda: hook.fn("layer", 0, feats.clone()))  # the layer's own output
    anchor_rows = 2 * 3 * size[0] * size[1] * 4  # branches × channels × h × w, float32
    assert kept - out.numel() * out.element_size() == anchor_rows
