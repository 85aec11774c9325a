"""Dense spatio-temporal attention: window convention, gather/flex paths vs the masked reference,
and the installed processor vs diffusers' unmodified AnimateDiff motion module."""

from __future__ import annotations

import pytest
import torch

from mvcustom_core.backbone.dense_attention import (
    dense_attention,
    dense_attention_window,
    disable_dense_attention,
    enable_dense_attention,
    motion_modules,
    set_dense_window,
    window_mask,
    window_starts,
    windowed_attention_reference,
)
from mvcustom_core.backbone.tiny import tiny_backbone


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def tiny_motion_unet():
    """A random SD1.5-shaped UNetMotionModel (1.2M parameters, ~0.1 s per call at 3×8×8 on CPU)."""
    return tiny_backbone(0).unet.eval()


# ---- window convention -------------------------------------------------------------------------

@pytest.mark.parametrize("length,k,expected", [
    (5, 3, [0, 0, 1, 2, 2]),        # odd k: centred, shifted at both borders
    (5, 2, [0, 1, 2, 3, 3]),        # even k: (k-1)//2 = 0 before, 1 after
    (6, 4, [0, 0, 1, 2, 2, 2]),
    (4, 1, [0, 1, 2, 3]),           # k = 1: the position itself
    (3, 7, [0, 0, 0]),              # k > L: whole axis
])
def test_window_starts_hand_derived(length, k, expected):
    assert window_starts(length, k).tolist() == expected


def test_window_mask_interior_is_centred_box_and_counts_are_constant():
    h, w, k = 7, 9, 3
    m = window_mask(h, w, k).view(h, w, h, w)
    assert (m.sum(dim=(2, 3)) == k * k).all()  # shifted, not cut, at borders
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for y, x in [(3, 4), (1, 1), (5, 7)]:  # interior: exactly |dy|, |dx| <= 1
        box = ((ys - y).abs() <= 1) & ((xs - x).abs() <= 1)
        assert torch.equal(m[y, x], box)
    # corner (0, 0): the window is rows/cols 0..2, not cut to 2×2
    assert torch.equal(m[0, 0], (ys <= 2) & (xs <= 2))
    assert bool(window_mask(4, 5, None).all())


def test_bad_impl_raises():
    q = torch.zeros(1, 1, 2, 3, 3, 4)
    with pytest.raises(ValueError, match="impl"):
        dense_attention(q, q, q, window=None, impl="natten")
    with pytest.raises(ValueError, match="impl"):
        enable_dense_attention(tiny_motion_unet(), window=3, impl="cuda")


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_bad_window_raises(bad):
    q = torch.zeros(1, 1, 2, 3, 3, 4)
    with pytest.raises(ValueError, match="window"):
        dense_attention(q, q, q, window=bad)


# ---- gather path vs the naive masked reference -------------------------------------------------

@pytest.mark.parametrize("f,h,w,k", [
    (3, 5, 6, 1), (3, 5, 6, 2), (2, 5, 6, 3), (4, 6, 5, 4), (2, 7, 7, 5), (2, 4, 8, 6), (3, 5, 6, 9)])
def test_gather_matches_masked_reference(generator, f, h, w, k):
    q, kk, v = (torch.randn(2, 2, f, h, w, 8, generator=generator, dtype=torch.float64) for _ in range(3))
    ref = windowed_attention_reference(q, kk, v, k)
    out = dense_attention(q, kk, v, window=k, impl="gather")
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("f,h,w,k,tile", [
    (2, 5, 6, 1, 2), (2, 5, 6, 2, 3), (2, 7, 7, 3, None), (3, 6, 5, 4, 4), (2, 9, 8, 5, 2), (2, 4, 8, 6, 3),
    (1, 9, 9, 7, None), (1, 12, 13, 3, 2), (2, 16, 11, 5, 3), (1, 14, 14, 4, 4), (1, 13, 12, 3, None)])
def test_tiled_matches_masked_reference(generator, f, h, w, k, tile):
    from mvcustom_core.backbone.dense_attention import _tiled_windowed

    q, kk, v = (torch.randn(1, 2, f, h, w, 8, generator=generator, dtype=torch.float64) for _ in range(3))
    ref = windowed_attention_reference(q, kk, v, k)
    torch.testing.assert_close(_tiled_windowed(q, kk, v, k, None, 1 << 26, tile), ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dense_attention(q, kk, v, window=k, impl="auto"), ref, rtol=1e-10, atol=1e-10)


def test_gather_chunked_rows_equal_unchunked(generator):
    q, k, v = (torch.randn(1, 2, 3, 6, 5, 4, generator=generator, dtype=torch.float64) for _ in range(3))
    whole = dense_attention(q, k, v, window=3)
    tiny_budget = dense_attention(q, k, v, window=3, chunk_elements=1)  # one row per chunk
    torch.testing.assert_close(tiny_budget, whole, rtol=1e-12, atol=1e-12)


def test_full_attention_is_unmasked_attention_and_chunks_agree(generator):
    q, k, v = (torch.randn(1, 2, 3, 4, 5, 4, generator=generator, dtype=torch.float64) for _ in range(3))
    b, n, f, h, w, d = q.shape
    flat = [t.reshape(b, n, f * h * w, d) for t in (q, k, v)]
    p = torch.softmax(flat[0] @ flat[1].transpose(-1, -2) / d ** 0.5, dim=-1)  # softmax(QK^T/sqrt(d))V
    expected = (p @ flat[2]).reshape(q.shape)
    torch.testing.assert_close(dense_attention(q, k, v, window=None), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dense_attention(q, k, v, window=None, chunk_elements=50), expected,
                               rtol=1e-10, atol=1e-10)
    # k >= max(H, W) covers the whole image: the same as full attention
    torch.testing.assert_close(dense_attention(q, k, v, window=5), expected, rtol=1e-10, atol=1e-10)


def test_window_one_is_per_pixel_temporal_attention(generator):
    q, k, v = (torch.randn(2, 2, 4, 3, 5, 8, generator=generator) for _ in range(3))
    out = dense_attention(q, k, v, window=1)
    per_pixel = lambda t: t.permute(0, 1, 3, 4, 2, 5)  # noqa: E731  [B, n, H, W, F, d]
    expected = torch.nn.functional.scaled_dot_product_attention(per_pixel(q), per_pixel(k), per_pixel(v))
    torch.testing.assert_close(out, expected.permute(0, 1, 4, 2, 3, 5), rtol=1e-5, atol=1e-6)


def test_windowed_gradients_match_reference(generator):
    q, k, v = (torch.randn(1, 1, 2, 10, 10, 4, generator=generator, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    g = torch.randn(1, 1, 2, 10, 10, 4, generator=generator, dtype=torch.float64)
    ref = torch.autograd.grad((windowed_attention_reference(q, k, v, 3) * g).sum(), (q, k, v))
    for impl in ("tiled", "gather"):
        ours = torch.autograd.grad((dense_attention(q, k, v, window=3, impl=impl) * g).sum(), (q, k, v))
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_flex_mask_matches_reference_eager(generator):
    pytest.importorskip("torch.nn.attention.flex_attention")
    q, k, v = (torch.randn(1, 1, 2, 3, 4, 4, generator=generator) for _ in range(3))
    ref = windowed_attention_reference(q, k, v, 3)
    out = dense_attention(q, k, v, window=3, impl="flex")
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


# ---- installed into a UNetMotionModel ------------------------------------------------------------

@pytest.fixture(scope="module")
def unet_and_inputs():
    unet = tiny_motion_unet()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 3, 8, 8, generator=g)  # [B, C, F, H, W]
    text = torch.randn(3, 5, 32, generator=g)  # [B·F, L, D]
    return unet, x, text


def _eps(unet, x, text):
    with torch.no_grad():
        return unet(x, torch.tensor(500), text).sample


@pytest.mark.parametrize("impl", ["auto", "tiled", "gather"])
def test_window_one_reproduces_unmodified_motion_modules(unet_and_inputs, impl):
    unet, x, text = unet_and_inputs
    original = _eps(unet, x, text)
    assert enable_dense_attention(unet, window=1, impl=impl) == len(motion_modules(unet)) == 7
    try:
        torch.testing.assert_close(_eps(unet, x, text), original, rtol=1e-5, atol=1e-5)
    finally:
        disable_dense_attention(unet)


def test_single_motion_module_window_one_and_full(unet_and_inputs):
    unet, _, _ = unet_and_inputs
    name, module = next(iter(motion_modules(unet).items()))
    hs = torch.randn(2 * 4, module.in_channels, 6, 5, generator=torch.Generator().manual_seed(3))  # B=2, F=4
    with torch.no_grad():
        original = module(hs, num_frames=4)
        enable_dense_attention(unet, window=1)
        try:
            torch.testing.assert_close(module(hs, num_frames=4), original, rtol=1e-5, atol=1e-5)
            set_dense_window(unet, None)
            full = module(hs, num_frames=4)
            set_dense_window(unet, 6)  # k >= max(H, W): full
            torch.testing.assert_close(module(hs, num_frames=4), full, rtol=1e-5, atol=1e-5)
        finally:
            disable_dense_attention(unet)
    assert (full - original).abs().max() > 1e-3, "full dense attention must change the output"


def test_batches_do_not_mix(unet_and_inputs):
    """Dense attention spans frames and positions of one sample, never two samples of a batch."""
    unet, _, _ = unet_and_inputs
    module = next(iter(motion_modules(unet).values()))
    g = torch.Generator().manual_seed(4)
    a, b = (torch.randn(3, module.in_channels, 4, 4, generator=g) for _ in range(2))
    enable_dense_attention(unet, window=None)
    try:
        with torch.no_grad():
            joint = module(torch.cat([a, b]), num_frames=3)
            alone = module(a, num_frames=3)
    finally:
        disable_dense_attention(unet)
    torch.testing.assert_close(joint[:3], alone, rtol=1e-5, atol=1e-5)


def test_disable_restores_bit_identical_and_window_changes_output(unet_and_inputs):
    unet, x, text = unet_and_inputs
    original = _eps(unet, x, text)
    enable_dense_attention(unet, window=None)
    enable_dense_attention(unet, window=3)  # re-enabling replaces, never stacks
    assert dense_attention_window(unet) == 3
    windowed = _eps(unet, x, text)
    assert disable_dense_attention(unet) is True
    assert disable_dense_attention(unet) is False
    assert torch.equal(_eps(unet, x, text), original)
    assert (windowed - original).abs().max() > 1e-4
    with pytest.raises(RuntimeError, match="not enabled"):
        set_dense_window(unet, 3)


def test_enable_on_plain_module_raises():
    with pytest.raises(ValueError, match="motion modules"):
        enable_dense_attention(torch.nn.Linear(2, 2))


# ---- progressive window schedule --------------------------------------------------------------

def test_window_schedule_linear_odd_and_monotone():
    from mvcustom_core.backbone.schedule import WindowSchedule

    s = WindowSchedule(start=1, end=9, steps=8, warmup=2)
    ks = [s(i) for i in range(0, 14)]
    # warmup holds start; raw = 1 + 8·(i-2)/8 = i-1, lowered to odd; end from step warmup+steps on
    assert ks == [1, 1, 1, 1, 3, 3, 5, 5, 7, 7, 9, 9, 9, 9]
    assert all(k % 2 == 1 for k in ks)


def test_window_schedule_cosine_full_and_even():
    from mvcustom_core.backbone.schedule import WindowSchedule

    cos = WindowSchedule(start=1, end=None, steps=100, shape="cosine", full_at=65)
    ks = [cos(i) for i in range(0, 101)]
    assert ks[0] == 1 and ks[-1] is None  # None = full attention
    assert all(a <= b for a, b in zip(ks[:-1], ks[1:-1]))
    assert ks[50] == 33  # raw = 1 + 64·(1 − cos(π/2))/2 = 33
    assert cos(25) == 9  # raw = 1 + 32·(1 − cos(π/4)) = 10.37 -> 10 -> odd 9
    even = WindowSchedule(start=2, end=8, steps=3, odd=False)
    assert [even(i) for i in range(4)] == [2, 4, 6, 8]
    with pytest.raises(ValueError, match="odd"):
        WindowSchedule(start=2, end=8, steps=3)
    with pytest.raises(ValueError, match="end"):
        WindowSchedule(start=5, end=3, steps=3)
    with pytest.raises(ValueError, match="shape"):
        WindowSchedule(start=1, end=3, steps=3, shape="exp")


def test_window_one_gradients_equal_original_for_training(unet_and_inputs):
    """Stage-0 training starts at k = 1: the motion-module gradients equal AnimateDiff's."""
    unet, x, text = unet_and_inputs
    params = [p for n, p in unet.named_parameters() if "motion_modules" in n and "attn1.to_q" in n]

    def grads():
        unet.zero_grad()
        (unet(x, torch.tensor(500), text).sample ** 2).mean().backward()
        return [p.grad.clone() for p in params]

    original = grads()
    enable_dense_attention(unet, window=1, impl="tiled")
    try:
        dense = grads()
        set_dense_window(unet, 3)
        wider = grads()
    finally:
        disable_dense_attention(unet)
        unet.zero_grad()
    for a, b in zip(dense, original):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert max((a - b).abs().max() for a, b in zip(wider, original)) > 1e-6
    assert all(torch.isfinite(g).all() for g in wider)


def test_deepcopy_of_an_enabled_model_stays_correct(unet_and_inputs):
    """Model patchers copy models: the copy must run its own shapes and disable on its own modules."""
    import copy

    unet, x, text = unet_and_inputs
    original = _eps(unet, x, text)
    enable_dense_attention(unet, window=3)
    try:
        dense = _eps(unet, x, text)
        clone = copy.deepcopy(unet)
    finally:
        disable_dense_attention(unet)
    assert torch.equal(_eps(clone, x, text), dense)
    assert torch.equal(_eps(unet, x, text), original)
    assert disable_dense_attention(clone) is True
    torch.testing.assert_close(_eps(clone, x, text), original, rtol=0, atol=0)


def test_per_frame_position_encoding_is_kept_for_every_token(unet_and_inputs):
    """Full dense attention is symmetric in frames except for the sinusoidal pe the block adds per
    frame: without pe, permuting the input frames permutes the output; with it, it does not."""
    unet, _, _ = unet_and_inputs
    module = next(iter(motion_modules(unet).values()))
    hs = torch.randn(3, module.in_channels, 4, 4, generator=torch.Generator().manual_seed(5))  # F = 3
    perm = torch.tensor([2, 0, 1])
    enable_dense_attention(unet, window=None)
    saved = [blk.pos_embed.pe.clone() for blk in module.transformer_blocks]
    try:
        with torch.no_grad():
            with_pe = (module(hs[perm], num_frames=3), module(hs, num_frames=3)[perm])
            for blk in module.transformer_blocks:
                blk.pos_embed.pe.zero_()
            without_pe = (module(hs[perm], num_frames=3), module(hs, num_frames=3)[perm])
    finally:
        for blk, pe in zip(module.transformer_blocks, saved):
            blk.pos_embed.pe.copy_(pe)
        disable_dense_attention(unet)
    torch.testing.assert_close(*without_pe, rtol=1e-5, atol=1e-5)
    assert (with_pe[0] - with_pe[1]).abs().max() > 1e-3
