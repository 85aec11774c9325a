"""The MVCustom sampler on a tiny UNetMotionModel: plain-sampler parity, DFR replacement (only steps < K, only
hooked layers, anchor untouched, each CFG branch its own anchor) against an independent rendering, CLC only for
t ≥ τ, and windows that render the same anchor features into shared frames."""

from __future__ import annotations

import pytest
import torch

from mvcustom_core.backbone.hooks import FeatureHook
from mvcustom_core.backbone.sampler import make_scheduler, sample
from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.inference import CLCPlan, DFRPlan, mvcustom_sample, prepare_run, resolve_anchor_geometry
from mvcustom_core.ops import apply_plan_reference, build_feature_mesh, plan_mesh_render, resample_depth

SIZE, STEPS = 64, 3  # 8×8 latents


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py (also: unet, text)


def _cams(n: int) -> CameraSet:
    az = torch.linspace(-0.25, 0.25, n)
    eye = torch.stack([1.8 * torch.sin(az), torch.full_like(az, -0.3), -1.8 * torch.cos(az)], dim=-1)
    return CameraSet.from_fov(look_at(eye, torch.zeros(3)), 50.0, (SIZE, SIZE))


def _recorder(layers, store):
    return FeatureHook(layers, lambda name, step, feats: store.append((step, name, feats.clone())) or None)


def test_all_off_is_the_plain_sampler_bit_for_bit(unet, text):
    cond, uncond = text
    plain = sample(unet, cond, uncond, 3, SIZE, SIZE, STEPS, 5.0, seed=11)
    assert torch.equal(mvcustom_sample(unet, cond, uncond, _cams(3), seed=11, steps=STEPS), plain)


def test_dfr_replaces_covered_non_anchor_features_in_early_steps_only(unet, text):
    cond, uncond = text
    cams, depth = _cams(3), torch.full((SIZE, SIZE), 2.5)
    plan = DFRPlan(depth=depth, depth_kind="metric", scale=1.0, steps=2, layers=("up_blocks.0",))
    run = prepare_run(unet, cams, dfr=plan, steps=STEPS)
    before, after, other = [], [], []
    # Forward hooks run in registration order: `before` sees the module output, `after` the replaced one.
    hooks = [_recorder(["up_blocks.0"], before), run.dfr, _recorder(["up_blocks.0"], after),
             _recorder(["up_blocks.1.resnets.0"], other)]
    run.hooks = hooks[:1] + run.hooks + hooks[2:]
    mvcustom_sample(unet, cond, uncond, cams, dfr=plan, seed=3, steps=STEPS, run=run)
    assert [s for s, _, _ in before] == [0, 1, 2] and len(other) == 3

    a = run.geometry.anchor
    assert a == 1
    mesh = build_feature_mesh(resample_depth(depth, (8, 8)), cams[a])  # independent of the hook's cache
    ref_plan = plan_mesh_render(mesh, cams, (8, 8))
    for (step, _, pre), (_, _, post) in zip(before, after):
        if step >= plan.steps:
            assert torch.equal(pre, post)
            continue
        for branch in range(2):  # batched CFG: uncond frames then cond frames, each with its own anchor
            rows = slice(3 * branch, 3 * branch + 3)
            rendered, cov = apply_plan_reference(ref_plan, mesh.vertex_features(pre[rows][a]))
            covered = (cov > 0).expand_as(rendered).clone()
            covered[a] = False
            assert covered[[0, 2]].any()
            torch.testing.assert_close(post[rows][covered], rendered[covered], rtol=1e-5, atol=1e-5)
            assert torch.equal(post[rows][~covered], pre[rows][~covered])  # anchor and uncovered untouched


def test_clc_acts_only_on_steps_with_t_at_least_tau(unet, text):
    cond, uncond = text
    cams = _cams(3)
    plan = DFRPlan(depth=torch.full((SIZE, SIZE), 2.5), depth_kind="metric", scale=1.0, steps=0)
    clc = CLCPlan(tau=500, erosion=0)
    base = mvcustom_sample(unet, cond, uncond, cams, dfr=plan, seed=5, steps=STEPS)
    run = prepare_run(unet, cams, dfr=plan, clc=clc, steps=STEPS)
    out = mvcustom_sample(unet, cond, uncond, cams, dfr=plan, clc=clc, seed=5, steps=STEPS, run=run)
    assert run.clc in run.hooks
    sched = make_scheduler("ddim")
    sched.set_timesteps(STEPS)
    assert sched.timesteps.tolist() == [667, 334, 1]
    assert run.clc.record == [0]  # only t = 667 >= 500
    keep = run.clc.keep > 0.5
    assert keep[run.geometry.anchor].all() and not keep.all()
    assert not torch.equal(out, base)
    # K = 0 means DFR only supplies geometry: without CLC the run equals the plain sampler.
    assert torch.equal(base, sample(unet, cond, uncond, 3, SIZE, SIZE, STEPS, 5.0, seed=5))


def test_windows_render_the_same_anchor_features_into_shared_frames(unet, text):
    cond, uncond = text
    cams = _cams(7)
    plan = DFRPlan(depth=torch.full((SIZE, SIZE), 2.5), depth_kind="metric", scale=1.0, steps=1,
                   layers=("up_blocks.0",))
    run = prepare_run(unet, cams, dfr=plan, steps=2, window=4, overlap=1)
    # anchor 3 in every window; non-anchor frames [0, 1, 2, 4, 5, 6] in runs of 3 with stride 2, the last window
    # ending at the last frame
    assert run.windows == [[0, 1, 2, 3], [2, 3, 4, 5], [3, 4, 5, 6]]
    after = []
    frames_seen = []
    rec = FeatureHook(["up_blocks.0"], lambda n, s, f: after.append((s, run.dfr.frames.clone(), f.clone())) or None)
    run.hooks = run.hooks + [rec]
    out = mvcustom_sample(unet, cond, uncond, cams, dfr=plan, seed=2, steps=2, run=run)
    assert out.shape == (7, 4, 8, 8) and torch.isfinite(out).all()
    step0 = [(fr, f) for s, fr, f in after if s == 0]
    assert len(step0) == len(run.windows)
    cov = run.geometry.coverage((8, 8)) > 0
    # A frame shared by two windows gets bit-identical replaced features where the anchor sees it.
    shared = 0
    for i in range(len(step0)):
        for j in range(i + 1, len(step0)):
            (fi, xi), (fj, xj) = step0[i], step0[j]
            for frame in set(fi.tolist()) & set(fj.tolist()) - {run.geometry.anchor}:
                ri, rj = fi.tolist().index(frame), fj.tolist().index(frame)
                m = cov[frame].expand(xi.shape[1], -1, -1)
                for b in range(2):
                    assert torch.equal(xi[b * len(fi) + ri][m], xj[b * len(fj) + rj][m])
                shared += 1
    assert shared > 0


@pytest.fixture(scope="module")
def customized(unet, customize_tiny):
    """A copy of the tiny UNet with one pose block that sees geometry, and its captured reference bank."""
    return customize_tiny(unet, _cams(4).transformed(torch.eye(4), 1.0), fuse_identity=True)


@pytest.mark.parametrize("ratio", [0.0, 0.34, 0.67, 1.0])
def test_pose_blocks_fuse_exactly_on_the_first_round_r_s_steps(customized, unet, text, ratio):
    """Pose ratio r: blocks on steps i < round(r·S), plain afterwards; the result equals a run split at that step
    into a pose-block head (relay hook, blocks always on) and a plain-UNet tail."""
    from mvcustom_core.customization.pose_block import pose_step_relay

    model, ctx, block = customized
    cond, uncond = text
    cams, k = _cams(3), round(ratio * STEPS)
    fused = []
    handle = block.fuse.register_forward_hook(lambda *_: fused.append(ctx.step))
    try:
        out = mvcustom_sample(model, cond, uncond, cams, pose_context=ctx, seed=6, steps=STEPS, pose_ratio=ratio,
                              pose_cache_dtype=None)  # float32 terms, as the reference below computes them
    finally:
        handle.remove()
    assert sorted(set(fused)) == list(range(k))

    x = None
    if k > 0:
        ctx.mode, ctx.target_cams, ctx.active_steps = "render", cams, None
        try:
            x = sample(model, cond, uncond, 3, SIZE, SIZE, STEPS, 5.0, seed=6, end_step=k,
                       hooks=[pose_step_relay(model, ctx)])
        finally:
            ctx.mode = "off"
            ctx.clear_cache()
    if k < STEPS:
        x = sample(unet, cond, uncond, 3, SIZE, SIZE, STEPS, 5.0, seed=6, latents=x, start_step=k)
    assert torch.equal(out, x)


def test_customized_sampler_pose_ratio_and_single_fy_render(customized, unet, text):
    model, ctx, block = customized
    cond, uncond = text
    cams = _cams(3)
    plain = sample(unet, cond, uncond, 3, SIZE, SIZE, STEPS, 5.0, seed=4)
    assert torch.equal(mvcustom_sample(model, cond, uncond, cams, pose_context=ctx, seed=4, steps=STEPS,
                                       pose_ratio=0.0), plain)  # pose blocks off on every step
    calls = []
    render = block.featurenerf.render_branches
    block.featurenerf.render_branches = lambda banks, *a, **k: calls.append(len(banks)) or render(banks, *a, **k)
    try:
        full = mvcustom_sample(model, cond, uncond, cams, pose_context=ctx, seed=4, steps=STEPS)
        assert calls == [2]  # both CFG branches rendered together at the first step, cached afterwards
        part = mvcustom_sample(model, cond, uncond, cams, pose_context=ctx, seed=4, steps=STEPS, pose_ratio=0.34)
    finally:
        del block.featurenerf.render_branches
    assert not torch.allclose(full, plain, atol=1e-4) and not torch.allclose(part, full, atol=1e-4)
    assert ctx.mode == "off" and not ctx._rendered  # state restored after the run


def test_field_depth_equals_the_blocks_expected_depth_and_drives_dfr(customized, text):
    from mvcustom_core.inference import field_depth, ray_length_to_z

    model, ctx, block = customized
    anchor = _cams(3)[1]
    depth, opacity = field_depth(model, ctx, anchor, (8, 8), opacity_threshold=0.0)
    ctx.mode, ctx.target_cams = "render", anchor
    try:
        with torch.no_grad():  # a render-mode forward of the anchor frame, with text
            model(torch.randn(1, 4, 1, 8, 8), 500, encoder_hidden_states=text[0])
    finally:
        ctx.mode = "off"
    out = ctx.outputs[block.name][0]
    torch.testing.assert_close(opacity, out.opacity[0])
    expected = ray_length_to_z(out.expected_depth[0] / out.opacity[0].clamp_min(1e-6), anchor)
    torch.testing.assert_close(depth, expected, rtol=1e-5, atol=1e-6)  # density is text-independent
    # The random field is faint (opacity ~0.1-0.3): trust pixels above 0.1 for the anchor depth.
    # Field depth is rendered at latent resolution (8×8 here).
    run = prepare_run(model, _cams(3), pose_context=ctx, dfr=DFRPlan(steps=1, opacity_threshold=0.1), steps=STEPS)
    ref8 = field_depth(model, ctx, anchor, (8, 8), opacity_threshold=0.1)[0]
    assert (ref8 > 0).any() and torch.equal(run.geometry.depth, ref8)

    # A full-resolution disparity image is aligned to that field depth on its opaque pixels.
    disparity = torch.where(ref8 > 0, (1 / ref8.clamp_min(1e-6) - 0.05) / 0.3, torch.full_like(ref8, 7.0))
    image = disparity.repeat_interleave(8, 0).repeat_interleave(8, 1)  # nearest upsampling to 64×64
    plan = DFRPlan(depth=image, depth_kind="disparity", opacity_threshold=0.1)
    geometry, aligned = resolve_anchor_geometry(plan, _cams(3), unet=model, pose_context=ctx)
    assert aligned.scale == pytest.approx(0.3, rel=1e-4) and aligned.shift == pytest.approx(0.05, abs=1e-4)
    big = ref8.repeat_interleave(8, 0).repeat_interleave(8, 1)
    torch.testing.assert_close(geometry.depth[big > 0], big[big > 0], rtol=1e-4, atol=0)


def test_sequential_cfg_branches_use_their_own_anchor_features():
    from mvcustom_core.inference import AnchorGeometry, DFRHook

    cams = _cams(3)
    geometry = AnchorGeometry(1, cams, torch.full((SIZE, SIZE), 2.5))
    hook = DFRHook(geometry, ["layer"], steps=1)
    feats = {b: torch.randn(3, 5, 8, 8, generator=torch.Generator().manual_seed(i)) for i, b in
             enumerate(("uncond", "cond"))}
    outs = {}
    for branch in ("uncond", "cond"):  # one step, branches one after the other
        hook.branch = branch
        outs[branch] = hook.fn("layer", 0, feats[branch])
    for branch in ("uncond", "cond"):
        rendered, cov = geometry.render(feats[branch][1])
        m = (cov > 0).expand_as(rendered)
        torch.testing.assert_close(outs[branch][m], rendered[m])


def test_pose_terms_are_rendered_before_the_unet_runs_and_cached_in_float16(customized, text):
    """The pre-render hook renders every block's W_y·Fy before the UNet call's first layer (so the render's scratch
    is not on top of the UNet's activations); the cache holds float16 terms; the result stays within 1e-3 of the
    float32 terms (measured: 3e-5) and differs from it (the rounding is real)."""
    model, ctx, block = customized
    cond, uncond = text
    cams, events = _cams(3), []
    render = block.featurenerf.render_branches
    block.featurenerf.render_branches = lambda *a, **k: events.append("render") or render(*a, **k)
    first_layer = model.conv_in.register_forward_pre_hook(lambda *_: events.append("unet"))
    cached, term_of = [], block.rendered_term

    def recording(*args, **kwargs):
        term = term_of(*args, **kwargs)
        cached.append(term.dtype)
        return term

    block.rendered_term = recording
    try:
        half = mvcustom_sample(model, cond, uncond, cams, pose_context=ctx, seed=2, steps=STEPS)
        exact = mvcustom_sample(model, cond, uncond, cams, pose_context=ctx, seed=2, steps=STEPS, pose_cache_dtype=None)
    finally:
        del block.featurenerf.render_branches, block.rendered_term
        first_layer.remove()
    assert events[:2] == ["render", "unet"] and events.count("render") == 2  # one per run, before the UNet
    assert set(cached[:len(cached) // 2]) == {torch.float16} and set(cached[len(cached) // 2:]) == {torch.float32}
    assert not torch.equal(half, exact)
    assert float((half - exact).norm() / exact.norm()) < 1e-3


def test_windows_give_each_window_its_cameras_and_cache_entry(customized, text):
    model, ctx, block = customized
    cond, uncond = text
    seen = []
    render = block.featurenerf.render_branches
    block.featurenerf.render_branches = (  # target cameras of each render, once per CFG branch
        lambda banks, refs, tgt, *a, **k: seen.extend([tgt.c2w.clone()] * len(banks)) or render(banks, refs, tgt, *a, **k))
    try:
        cams = _cams(3)
        run = prepare_run(model, cams, pose_context=ctx, steps=STEPS, window=2, overlap=0,
                          dfr=DFRPlan(depth=torch.full((SIZE, SIZE), 2.5), depth_kind="metric", scale=1.0, steps=1))
        assert run.windows == [[0, 1], [1, 2]]
        mvcustom_sample(model, cond, uncond, cams, pose_context=ctx, seed=1, steps=STEPS, run=run)
    finally:
        del block.featurenerf.render_branches
    assert len(seen) == 4  # 2 windows × 2 CFG branches, first step only
    for c2w, frames in zip(seen, ([0, 1], [0, 1], [1, 2], [1, 2])):
        assert torch.equal(c2w, cams.c2w[frames])


def test_a_reference_bank_without_installed_pose_blocks_is_refused(unet):
    from mvcustom_core.customization.pose_block import PoseBlockError, PoseContext

    ctx = PoseContext(references={"down_blocks.0.attentions.0.transformer_blocks.0": torch.zeros(1, 2, 32, 8, 8)})
    with pytest.raises(PoseBlockError, match="no pose blocks installed"):
        prepare_run(unet, _cams(3), pose_context=ctx, steps=STEPS)


def test_an_unnormalized_trajectory_is_refused_with_pose_blocks(customized):
    from mvcustom_core.customization.pose_block import PoseBlockError

    model, ctx, _ = customized
    far = _cams(3).transformed(torch.eye(4), 2.0)  # twice the scene scale: cameras ~3.6 units out
    with pytest.raises(PoseBlockError, match="trajectory frame 0 is 3.6.* units from the scene origin"):
        prepare_run(model, far, pose_context=ctx, steps=STEPS)


def test_pose_context_after_a_run_renders_other_cameras_afresh(customized, text):
    """A run's Fy cache must not outlive it: a later render-mode forward with other cameras (file_format.py: "set
    target_cams and mode = 'render' to use it") gets their own Fy, not the previous cameras'."""
    model, ctx, _ = customized
    cond, uncond = text
    mvcustom_sample(model, cond, uncond, _cams(3), pose_context=ctx, seed=1, steps=1)
    g = torch.Generator().manual_seed(3)
    x, states = torch.randn(1, 4, 3, 8, 8, generator=g), cond.expand(3, -1, -1)

    def render(cams):
        ctx.mode, ctx.target_cams = "render", cams
        try:
            with torch.no_grad():
                return model(x, 500, encoder_hidden_states=states).sample
        finally:
            ctx.mode = "off"

    other = _cams(7)[[1, 3, 5]]
    assert not torch.equal(other.c2w, _cams(3).c2w)
    render(_cams(3))
    after = render(other)
    ctx.clear_cache()
    cached, ctx.cache_rendered = ctx.cache_rendered, False
    try:
        expected = render(other)  # rendered from scratch
    finally:
        ctx.cache_rendered = cached
    assert torch.equal(after, expected)


def test_a_refused_window_plan_leaves_the_pose_context_off(customized, unet):
    """prepare_run refusing the windows must not leave the shared UNet's pose blocks in render mode."""
    from mvcustom_core.inference.windows import WindowError

    model, ctx, _ = customized
    plan = DFRPlan(depth=torch.full((SIZE, SIZE), 2.5), depth_kind="metric", scale=1.0, steps=1)
    with pytest.raises(WindowError, match="overlap"):
        prepare_run(model, _cams(7), pose_context=ctx, dfr=plan, steps=STEPS, pose_ratio=0.5, window=4, overlap=3)
    assert ctx.mode == "off" and ctx.active_steps is None
    g = torch.Generator().manual_seed(4)
    x, states = torch.randn(1, 4, 7, 8, 8, generator=g), torch.randn(7, 5, 32, generator=g)
    with torch.no_grad():  # pose blocks off: the customized model is the plain backbone, bit for bit
        assert torch.equal(model(x, 500, encoder_hidden_states=states).sample,
                           unet(x, 500, encoder_hidden_states=states).sample)


def test_cfg_one_renders_with_the_cond_reference_bank(customized, text):
    """A customization's bank holds [uncond, cond] entries (training.py); CFG 1 runs the cond branch only, so it
    must render Fy from the cond entry: the same result as a bank holding that entry alone."""
    model, ctx, _ = customized
    cond, uncond = text
    bank = dict(ctx.references)
    g = torch.Generator().manual_seed(5)
    try:
        ctx.references = {k: torch.cat([torch.randn(v.shape, generator=g), v]) for k, v in bank.items()}
        two = mvcustom_sample(model, cond, uncond, _cams(3), pose_context=ctx, seed=2, steps=2, cfg=1.0)
        ctx.references = {k: v[1:] for k, v in ctx.references.items()}
        cond_only = mvcustom_sample(model, cond, uncond, _cams(3), pose_context=ctx, seed=2, steps=2, cfg=1.0)
    finally:
        ctx.references = bank
    assert torch.equal(two, cond_only)
