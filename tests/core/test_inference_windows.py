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


def test_windowed_blend_equals_the_whole_clip_for_a_frame_independent_model():
    torch.manual_seed(0)
    model = _PerFrame()
    x = torch.randn(2, 4, 11, 5, 5)
    text = torch.randn(2 * 11, 3, 6)
    whole = model(x, 10, text).sample
    seen = []
    windowed = WindowedUNet(model, plan_windows(11, 5, 2, anchor=5), anchor=5, on_window=seen.append)
    with torch.no_grad():
        out = windowed(x, 10, encoder_hidden_states=text).sample
    torch.testing.assert_close(out, whole.detach(), rtol=1e-6, atol=1e-6)
    assert model.calls[1:] == [5] * (len(windowed.windows)) and seen[-1] is None
    assert [n for n, _ in windowed.named_modules()] == ["", "conv"]  # names of the wrapped model
