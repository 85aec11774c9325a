"""Frame windows: coverage, anchor in every window, overlap; blending reproduces a frame-independent model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mvcustom_core.inference.windows import WindowError, WindowedUNet, plan_windows, window_weights


@pytest.mark.parametrize("frames,size,overlap,anchor", [(16, 16, 4, 8), (20, 8, 3, 10), (23, 6, 2, None), (9, 4, 1, 0)])
def test_windows_cover_every_frame_with_the_anchor_in_each(frames, size, overlap, anchor):
    windows = plan_windows(frames, size, overlap, anchor)
    assert sorted(set(f for w in windows for f in w)) == list(range(frames))
    assert all(len(w) == min(size, frames) and w == sorted(set(w)) for w in windows)
    if anchor is not None:
        assert all(anchor in w for w in windows)
    for a, b in zip(windows, windows[1:]):  # consecutive windows share at least `overlap` non-anchor frames
        shared = set(a) & set(b) - {anchor}
        assert len(shared) >= overlap


def test_window_weights_ramp_and_anchor():
    assert window_weights([0, 1, 2, 3, 7], anchor=7).tolist() == [1.0, 2.0, 2.0, 1.0, 1.0]
    with pytest.raises(WindowError, match="overlap"):
        plan_windows(20, 4, 3, anchor=0)


class _PerFrame(nn.Module):
    """A 'video UNet' whose output for each frame depends only on that frame and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(4, 4, (1, 3, 3), padding=(0, 1, 1))
        self.calls: list[int] = []

    def forward(self, sample, timestep, encoder_hidden_states):
        n, c, f = sample.shape[:3]
        self.calls.append(f)
        text = encoder_hidden_states.reshape(n, f, -1).mean(-1)  # [N, F]
        return SimpleNamespace(sample=self.conv(sample) + text[:, None, :, None, None])


def test_plan_windows_example_and_last_window_ends_at_the_last_frame():
    # non-anchor frames [0, 1, 2, 3, 5, 6, 7, 8, 9] in runs of 4, stride 2: starts 0, 2, 4, then 5 (ends at frame 9)
    assert plan_windows(10, size=5, overlap=2, anchor=4) == [[0, 1, 2, 3, 4], [2, 3, 4, 5, 6], [4, 5, 6, 7, 8],
                                                             [4, 6, 7, 8, 9]]
    assert plan_windows(7, size=3, overlap=1) == [[0, 1, 2], [2, 3, 4], [4, 5, 6]]  # F - overlap a multiple of stride
    assert plan_windows(8, size=3, overlap=1) == [[0, 1, 2], [2, 3, 4], [4, 5, 6], [5, 6, 7]]
    assert plan_windows(3, size=16, overlap=4, anchor=1) == [[0, 1, 2]]  # F smaller than the window
    assert plan_windows(1, size=16, overlap=4, anchor=0) == [[0]]


@pytest.mark.parametrize("frames,size,overlap,anchor", [(11, 5, 2, 5), (11, 5, 2, None), (8, 3, 1, 7), (6, 2, 0, 0)])
def test_windowed_blend_equals_the_whole_clip_for_a_frame_independent_model(frames, size, overlap, anchor):
    torch.manual_seed(0)
    model = _PerFrame()
    x = torch.randn(2, 4, frames, 5, 5)
    text = torch.randn(2 * frames, 3, 6)
    whole = model(x, 10, text).sample
    seen = []
    windowed = WindowedUNet(model, plan_windows(frames, size, overlap, anchor), anchor=anchor, on_window=seen.append)
    with torch.no_grad():
        out = windowed(x, 10, encoder_hidden_states=text).sample
    torch.testing.assert_close(out, whole.detach(), rtol=1e-6, atol=1e-6)
    assert model.calls[1:] == [min(size, frames)] * len(windowed.windows) and seen[-1] is None
    assert [f.tolist() for f in seen[:-1]] == plan_windows(frames, size, overlap, anchor)
    assert [n for n, _ in windowed.named_modules()] == ["", "conv"]  # names of the wrapped model


class _WindowMean(nn.Module):
    """Each frame's output is the mean of the whole model input: it differs from window to window."""

    def forward(self, sample, timestep, encoder_hidden_states):
        return SimpleNamespace(sample=sample.mean(dim=2, keepdim=True).expand_as(sample) * 1.0)


@pytest.mark.parametrize("frames,size,overlap,anchor", [(10, 5, 2, 4), (8, 3, 1, None)])
def test_windowed_blend_is_the_ramp_weighted_mean_over_windows(frames, size, overlap, anchor):
    x = torch.randn(1, 2, frames, 3, 3, generator=torch.Generator().manual_seed(0))
    windows = plan_windows(frames, size, overlap, anchor)
    out = WindowedUNet(_WindowMean(), windows, anchor=anchor)(x, 1, encoder_hidden_states=torch.zeros(frames, 1, 1))
    num, den = torch.zeros_like(x), torch.zeros(frames)
    for w in windows:  # reference: weight min(i + 1, n − i) at the i-th of a window's n non-anchor frames, anchor 1
        others = [f for f in w if f != anchor]
        mean = x[:, :, w].mean(dim=2)
        for f in w:
            wt = 1.0 if f == anchor else float(min(others.index(f) + 1, len(others) - others.index(f)))
            num[:, :, f] += wt * mean
            den[f] += wt
    torch.testing.assert_close(out.sample, num / den[None, None, :, None, None], rtol=1e-6, atol=1e-6)
