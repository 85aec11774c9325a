"""Analytic primitives: ray intervals against brute-force marching of the implicit function."""

from __future__ import annotations

import math

import pytest
import torch

from mvcustom_core.synthetic.primitives import Box, CappedCylinder, Ellipsoid, HalfSpaceY, Pose, first_hit

D = torch.float64

SOLIDS = {
    "sphere": Ellipsoid(Pose((0.1, -0.2, 0.3)), radii=(0.7, 0.7, 0.7)),
    "ellipsoid": Ellipsoid(Pose((0.1, -0.2, 0.3), (30.0, -20.0, 50.0)), radii=(0.9, 0.4, 0.6)),
    "box": Box(Pose((-0.2, 0.1, 0.0), (10.0, 35.0, -25.0)), half_extents=(0.5, 0.3, 0.8)),
    "cylinder": CappedCylinder(Pose((0.2, 0.0, -0.1), (20.0, 0.0, 65.0)), radius=0.35, half_height=0.9),
}


def _rays(n=400, seed=0):
    """Rays from a sphere of radius 3 aimed near the origin (about half hit each solid)."""
    g = torch.Generator().manual_seed(seed)
    o = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=D), dim=-1) * 3.0
    aim = torch.randn(n, 3, generator=g, dtype=D) * 0.6
    return o, (aim - o) * (0.5 + torch.rand(n, 1, generator=g, dtype=D))  # non-unit directions


@pytest.mark.parametrize("name", list(SOLIDS))
def test_interval_matches_marching_the_implicit_function(name):
    solid = SOLIDS[name]
    o, d = _rays()
    t_in, t_out = solid.interval(o, d)
    hit = t_in <= t_out
    assert 0.2 < hit.float().mean() < 0.95
    # Both ends lie on the surface; the middle of the chord is inside.
    for t in (t_in, t_out):
        assert solid.implicit(o[hit] + t[hit, None] * d[hit]).abs().max() < 1e-12
    assert (solid.implicit(o[hit] + (0.5 * (t_in + t_out))[hit, None] * d[hit]) < 0).all()
    # Marching t in [0, 2] (the far side of the origin) finds the inside exactly between the roots.
    ts = torch.linspace(0, 2, 2001, dtype=D)
    level = solid.implicit(o[:, None] + ts[None, :, None] * d[:, None])  # [N, T]
    inside = level < 0
    expected = (ts[None] > t_in[:, None]) & (ts[None] < t_out[:, None])
    # Samples within one step of a root may round either way.
    near_root = ((ts[None] - t_in[:, None]).abs() < 1e-3) | ((ts[None] - t_out[:, None]).abs() < 1e-3)
    assert torch.equal(inside[~near_root], expected[~near_root])


@pytest.mark.parametrize("name", list(SOLIDS))
def test_normal_is_the_normalised_gradient_of_the_implicit(name):
    solid = SOLIDS[name]
    o, d = _rays(seed=1)
    t_in, t_out = solid.interval(o, d)
    hit = t_in <= t_out
    p = (o[hit] + t_in[hit, None] * d[hit]).requires_grad_(True)
    (grad,) = torch.autograd.grad(solid.implicit(p).sum(), p)
    n = solid.normal(p.detach())
    torch.testing.assert_close(n, torch.nn.functional.normalize(grad, dim=-1), rtol=0, atol=1e-9)
    assert ((n * d[hit]).sum(-1) < 0).all()  # entry points face the incoming ray


@pytest.mark.parametrize("name", list(SOLIDS))
def test_bounding_radius_encloses_the_surface_tightly(name):
    solid = SOLIDS[name]
    # The ellipsoid's bound |c - centre| + max radius is exact only about its own centre.
    centre = solid.pose.center if name == "ellipsoid" else (0.3, -0.1, 0.2)
    bound = solid.bounding_radius(centre)
    # Dense surface samples: rays from a big sphere aimed at random interior points.
    g = torch.Generator().manual_seed(2)
    o = torch.nn.functional.normalize(torch.randn(20000, 3, generator=g, dtype=D), dim=-1) * 5.0
    d = torch.tensor(solid.pose.center, dtype=D) - o
    t_in, t_out = solid.interval(o, d)
    pts = torch.cat([o + t_in[:, None] * d, o + t_out[:, None] * d])
    dist = (pts - torch.tensor(centre, dtype=D)).norm(dim=-1)
    assert dist.max() <= bound + 1e-12
    assert dist.max() >= 0.97 * bound


def test_box_rays_grazing_a_face_do_not_produce_nan():
    box = Box(half_extents=(1.0, 1.0, 1.0))
    o = torch.tensor([[-3.0, 1.0, 0.0], [-3.0, 1.0 + 1e-9, 0.0]], dtype=D)  # in the plane of y = 1
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=D)
    t_in, t_out = box.interval(o, d)
    assert torch.isfinite(t_in[0]) and t_in[0] == 2.0 and t_out[0] == 4.0
    assert t_in[1] == math.inf and t_out[1] == -math.inf


def test_ground_half_space_and_first_hit():
    ground = HalfSpaceY(height=0.8)
    o = torch.tensor([[0.0, -1.0, 0.0], [0.0, -1.0, 0.0], [0.0, 2.0, 0.0]], dtype=D)
    d = torch.tensor([[0.0, 2.0, 1.0], [0.0, -1.0, 0.0], [0.0, 1.0, 0.0]], dtype=D)
    t = first_hit(*ground.interval(o, d), 0.0)
    assert t[0] == pytest.approx(0.9)  # -1 + 2 t = 0.8
    assert t[1] == math.inf  # going up, away from the ground
    assert t[2] == math.inf  # starts inside the solid below the ground: no surface ahead
    assert ground.implicit(o[:1] + t[0] * d[:1]).abs().max() < 1e-15
