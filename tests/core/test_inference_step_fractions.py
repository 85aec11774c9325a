"""Schedule fractions: DFR, CLC and the pose-block ratio act on the same part of the schedule at any step count.

One rule (``leading_steps``): a fraction f of an S-step schedule covers steps i < ⌊f·S + ½⌋. The sampler runs below
record the steps each hook acted on; plans with an absolute DFR K or a CLC timestep τ (saved before fractions) keep
their meaning.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from mvcustom_core.backbone.sampler import make_scheduler
from mvcustom_core.backbone.schedule import leading_steps
from mvcustom_core.cameras import CameraSet, look_at
from mvcustom_core.customization.pose_block import active_pose_steps
from mvcustom_core.inference import CLCPlan, DFRPlan, mvcustom_sample, prepare_run
from mvcustom_core.inference.clc import CLCError
from mvcustom_core.inference.dfr import DFRError

SIZE = 32  # 4×4 latents: the runs below are about step indices, not pictures

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py (also: unet, text)


def _cams(n: int = 3) -> CameraSet:
    az = torch.linspace(-0.25, 0.25, n)
    eye = torch.stack([1.8 * torch.sin(az), torch.full_like(az, -0.3), -1.8 * torch.cos(az)], dim=-1)
    return CameraSet.from_fov(look_at(eye, torch.zeros(3)), 50.0, (SIZE, SIZE))


def _half_up(fraction: str, steps: int) -> int:
    """⌊f·S + ½⌋ in exact rational arithmetic (the decimal fraction as written)."""
    exact = Fraction(fraction) * steps + Fraction(1, 2)
    return exact.numerator // exact.denominator


def _acted_steps(unet, text, steps: int, dfr: DFRPlan, clc: CLCPlan) -> tuple[list[int], list[int]]:
    cond, uncond = text
    cams = _cams()
    run = prepare_run(unet, cams, dfr=dfr, clc=clc, steps=steps)
    run.dfr.record = []
    with torch.no_grad():
        mvcustom_sample(unet, cond, uncond, cams, dfr=dfr, clc=clc, seed=0, steps=steps, run=run)
    return sorted({step for step, *_ in run.dfr.record}), run.clc.record


@pytest.mark.parametrize("steps", [20, 30, 45, 50, 100])
def test_default_dfr_and_clc_cover_the_same_part_of_the_schedule_at_any_step_count(unet, text, steps):
    """DFR on the first 70 % (the paper's 35 of 50), CLC on the first 10 % (5 of 50), at every step count."""
    depth = torch.full((SIZE, SIZE), 2.5)
    dfr_steps, clc_steps = _acted_steps(unet, text, steps, DFRPlan(depth=depth, depth_kind="metric", scale=1.0),
                                        CLCPlan(erosion=0))
    assert dfr_steps == list(range(_half_up("0.7", steps)))
    assert clc_steps == list(range(_half_up("0.1", steps)))
    assert {20: 14, 30: 21, 45: 32, 50: 35, 100: 70}[steps] == len(dfr_steps)


@pytest.mark.parametrize("steps", [20, 30])
def test_an_absolute_k_and_a_timestep_tau_keep_their_old_meaning(unet, text, steps):
    """Plans saved before fractions: K = 35 replaces on every step of a shorter run; τ = 900 acts while t ≥ 900."""
    depth = torch.full((SIZE, SIZE), 2.5)
    dfr_steps, clc_steps = _acted_steps(unet, text, steps,
                                        DFRPlan(depth=depth, depth_kind="metric", scale=1.0, steps=35),
                                        CLCPlan(tau=900, erosion=0))
    assert dfr_steps == list(range(steps))
    sched = make_scheduler("ddim")
    sched.set_timesteps(steps)
    assert clc_steps == [i for i, t in enumerate(sched.timesteps.tolist()) if t >= 900]
    assert len(clc_steps) == {20: 2, 30: 2}[steps]  # 10 % of 20 but 6.7 % of 30: why fractions replace τ


@pytest.mark.parametrize("fraction", ["0", "0.1", "0.25", "0.29", "0.5", "0.57", "0.7", "0.75", "1"])
def test_one_rounding_rule_for_pose_ratio_dfr_and_clc(fraction):
    """Halves round up in exact decimal terms (0.29·50 = 14.5 -> 15, though 0.29·50 is 14.499… in binary)."""
    f = float(fraction)
    for steps in (1, 7, 10, 20, 25, 30, 45, 50, 85, 100, 150):
        n = _half_up(fraction, steps)
        assert leading_steps(f, steps) == n
        assert DFRPlan(fraction=f).active_steps(steps) == n
        assert [i for i in range(steps) if CLCPlan(fraction=f).acts(i, steps, t=0)] == list(range(n))
        assert active_pose_steps(f, steps) == (None if f == 1.0 else n)


def test_bad_fractions_are_refused_naming_the_plan():
    with pytest.raises(DFRError, match=r"DFR fraction must be a fraction of the schedule in \[0, 1\], got 1\.5"):
        DFRPlan(fraction=1.5)
    with pytest.raises(CLCError, match=r"CLC fraction must be a fraction of the schedule in \[0, 1\], got -0\.1"):
        CLCPlan(fraction=-0.1)
    with pytest.raises(ValueError, match=r"steps must be an int >= 0"):
        leading_steps(0.5, -1)
