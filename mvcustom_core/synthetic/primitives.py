"""Analytic convex solids for the synthetic scene: exact ray intervals, implicit functions, normals.

Every primitive is a convex solid described in its own *local* frame and placed in the world by a
rigid :class:`Pose` (``X_world = rotation @ X_local + center``). A rigid map keeps the ray parameter,
so a ray ``o + t d`` is intersected by mapping ``o`` and ``d`` into the local frame; ``d`` need not be
unit length and ``t`` is always in units of ``d``.

Convention:
    - ``interval(o, d)`` returns the parameters ``(t_in, t_out)`` where the ray enters and leaves the
      solid; a miss is ``(+inf, -inf)``. Solids may be unbounded (the ground half-space), so either
      end may be infinite.
    - ``implicit(p)`` is zero on the surface, negative inside the solid; it is the exact signed
      distance for the box, the capped cylinder, the sphere and the half-space.
    - ``normal(p)`` is the outward unit normal of the surface point nearest in the sense of the
      implicit function (exact for points on the surface).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Pose", "Ellipsoid", "Box", "CappedCylinder", "HalfSpaceY", "Primitive", "first_hit",
           "rotation_xyz", "euler_xyz_from_matrix"]


def rotation_xyz(degrees: tuple[float, float, float]) -> Tensor:
    """``[3, 3]`` float64 rotation ``Rz @ Ry @ Rx`` from angles (degrees) about the world axes."""
    ax, ay, az = (math.radians(a) for a in degrees)
    rx = torch.tensor([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]],
                      dtype=torch.float64)
    ry = torch.tensor([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]],
                      dtype=torch.float64)
    rz = torch.tensor([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]],
                      dtype=torch.float64)
    return rz @ ry @ rx


def euler_xyz_from_matrix(rotation: Tensor) -> tuple[float, float, float]:
    """The angles ``(ax, ay, az)`` in degrees with ``rotation_xyz(angles) == rotation`` (``[3, 3]``).

    From ``R = Rz Ry Rx``: ``R[2, 0] = -sin ay``, ``(R[2, 1], R[2, 2]) = cos ay (sin ax, cos ax)``,
    ``(R[1, 0], R[0, 0]) = cos ay (sin az, cos az)``. At ``cos ay = 0`` (gimbal lock) only ``ax ∓ az``
    is determined; ``az = 0`` is chosen and ``ax`` read from ``R[0, 1], R[1, 1]``.
    """
    r = rotation.to(torch.float64)
    ay = math.asin(max(-1.0, min(1.0, float(-r[2, 0]))))
    if math.cos(ay) > 1e-6:
        ax = math.atan2(float(r[2, 1]), float(r[2, 2]))
        az = math.atan2(float(r[1, 0]), float(r[0, 0]))
    else:  # R = Ry(±90) Rx(ax): R[0, 1] = ±sin ax, R[1, 1] = cos ax
        ax = math.atan2(float(r[0, 1]) * math.copysign(1.0, float(-r[2, 0])), float(r[1, 1]))
        az = 0.0
    return math.degrees(ax), math.degrees(ay), math.degrees(az)


@dataclass(frozen=True)
class Pose:
    """Rigid placement: ``center`` (world position of the local origin) and ``rotation_deg``.

    ``rotation_deg = (ax, ay, az)`` builds ``Rz @ Ry @ Rx`` (angles about the world axes, applied x
    first), the matrix whose columns are the local axes in world coordinates.
    """

    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def rotation(self) -> Tensor:
        """``[3, 3]`` float64 local-to-world rotation."""
        return rotation_xyz(self.rotation_deg)

    def moved(self, rotation: Tensor, offset: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> "Pose":
        """This pose after the rigid motion ``X -> rotation @ X + offset`` of the world (``rotation [3, 3]``)."""
        r = rotation.to(torch.float64)
        center = r @ torch.tensor(self.center, dtype=torch.float64) + torch.tensor(offset, dtype=torch.float64)
        return Pose(tuple(float(c) for c in center), euler_xyz_from_matrix(r @ self.rotation))

    def to_local(self, points: Tensor) -> Tensor:
        """``points: [..., 3]`` world -> local coordinates."""
        r = self.rotation.to(points)
        c = torch.tensor(self.center, dtype=points.dtype, device=points.device)
        return (points - c) @ r  # row-vector form of R^T (p - c)

    def dir_to_local(self, dirs: Tensor) -> Tensor:
        """``dirs: [..., 3]`` world -> local directions."""
        return dirs @ self.rotation.to(dirs)

    def dir_to_world(self, dirs: Tensor) -> Tensor:
        """``dirs: [..., 3]`` local -> world directions."""
        return dirs @ self.rotation.to(dirs).T


def _slab(o: Tensor, d: Tensor, lo: float, hi: float) -> tuple[Tensor, Tensor]:
    """Interval of ``t`` with ``lo <= o + t d <= hi`` for one coordinate (``o, d: [...]``).

    The slab method (Kay & Kajiya, "Ray tracing complex scenes", SIGGRAPH 1986).

    A ray parallel to the slab (``d == 0``) is inside for all ``t`` or for none; handling it apart
    avoids the ``0 * inf`` NaN of the textbook formula when ``o`` sits on a face.
    """
    parallel = d == 0
    safe_d = torch.where(parallel, torch.ones_like(d), d)
    t1, t2 = (lo - o) / safe_d, (hi - o) / safe_d
    near, far = torch.minimum(t1, t2), torch.maximum(t1, t2)
    inside = (o >= lo) & (o <= hi)
    inf = torch.full_like(o, math.inf)
    near = torch.where(parallel, torch.where(inside, -inf, inf), near)
    far = torch.where(parallel, torch.where(inside, inf, -inf), far)
    return near, far


def _quadratic_interval(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Roots of ``a t^2 + 2 b t + c = 0`` as an interval (``a > 0``); a miss is ``(+inf, -inf)``.

    Uses the cancellation-free pair ``q = -(b + sign(b) sqrt(disc))``, ``t = q / a`` and ``t = c / q``
    (Press et al., Numerical Recipes, 3rd ed., section 5.6).
    """
    disc = b * b - a * c
    hit = disc >= 0
    sq = torch.sqrt(disc.clamp_min(0))
    sign_b = torch.where(b >= 0, torch.ones_like(b), -torch.ones_like(b))
    q = -(b + sign_b * sq)
    safe_q = torch.where(q == 0, torch.ones_like(q), q)
    t1 = q / a
    t2 = torch.where(q == 0, torch.zeros_like(q), c / safe_q)
    inf = torch.full_like(a, math.inf)
    return torch.where(hit, torch.minimum(t1, t2), inf), torch.where(hit, torch.maximum(t1, t2), -inf)


@dataclass(frozen=True)
class Primitive:
    """Base: a convex solid placed by ``pose``. Subclasses implement the ``_local`` methods."""

    pose: Pose = field(default_factory=Pose)

    def interval(self, origins: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
        """``origins, dirs: [..., 3]`` world rays -> ``(t_in, t_out)``, each ``[...]``."""
        return self._interval_local(self.pose.to_local(origins), self.pose.dir_to_local(dirs))

    def implicit(self, points: Tensor) -> Tensor:
        """``points: [..., 3]`` world -> ``[...]``, zero on the surface, negative inside."""
        return self._implicit_local(self.pose.to_local(points))

    def normal(self, points: Tensor) -> Tensor:
        """``points: [..., 3]`` world -> ``[..., 3]`` outward unit normals."""
        n = self.pose.dir_to_world(self._normal_local(self.pose.to_local(points)))
        return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def bounding_radius(self, center: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> float:
        """Radius of a sphere about ``center`` (world) that encloses the solid (inf if unbounded).

        Exact (the farthest surface point) for spheres, boxes and cylinders; for an ellipsoid exact
        only about its own centre, otherwise the bound ``|c - center| + max(radii)``.
        """
        raise NotImplementedError

    def _interval_local(self, o: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _implicit_local(self, p: Tensor) -> Tensor:
        raise NotImplementedError

    def _normal_local(self, p: Tensor) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class Ellipsoid(Primitive):
    """Axis-aligned (in the local frame) ellipsoid with semi-axes ``radii``; equal radii: a sphere."""

    radii: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def _r(self, like: Tensor) -> Tensor:
        return torch.tensor(self.radii, dtype=like.dtype, device=like.device)

    def _interval_local(self, o: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        r = self._r(o)
        o, d = o / r, d / r  # the unit sphere in scaled coordinates; t is unchanged
        return _quadratic_interval((d * d).sum(-1), (o * d).sum(-1), (o * o).sum(-1) - 1)

    def _implicit_local(self, p: Tensor) -> Tensor:
        # Exact distance for a sphere; for an ellipsoid a signed function with the same zero set.
        return ((p / self._r(p)).norm(dim=-1) - 1) * min(self.radii)

    def _normal_local(self, p: Tensor) -> Tensor:
        return p / self._r(p) ** 2  # gradient of |p / r|^2

    def bounding_radius(self, center: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> float:
        return math.dist(self.pose.center, center) + max(self.radii)


@dataclass(frozen=True)
class Box(Primitive):
    """Box ``|x| <= hx, |y| <= hy, |z| <= hz`` in the local frame (``half_extents``)."""

    half_extents: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def _h(self, like: Tensor) -> Tensor:
        return torch.tensor(self.half_extents, dtype=like.dtype, device=like.device)

    def _interval_local(self, o: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        t_in = torch.full_like(o[..., 0], -math.inf)
        t_out = torch.full_like(o[..., 0], math.inf)
        for axis, h in enumerate(self.half_extents):
            near, far = _slab(o[..., axis], d[..., axis], -h, h)
            t_in, t_out = torch.maximum(t_in, near), torch.minimum(t_out, far)
        miss = t_in > t_out
        return torch.where(miss, math.inf, t_in), torch.where(miss, -math.inf, t_out)

    def _implicit_local(self, p: Tensor) -> Tensor:
        # Exact box SDF (I. Quilez, "distance functions", iquilezles.org/articles/distfunctions).
        q = p.abs() - self._h(p)
        return q.clamp_min(0).norm(dim=-1) + q.amax(dim=-1).clamp_max(0)

    def _normal_local(self, p: Tensor) -> Tensor:
        q = p.abs() - self._h(p)
        face = torch.nn.functional.one_hot(q.argmax(dim=-1), 3).to(p)
        return face * torch.where(p >= 0, 1.0, -1.0).to(p)

    def bounding_radius(self, center: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> float:
        corners = torch.tensor([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)],
                               dtype=torch.float64) * torch.tensor(self.half_extents, dtype=torch.float64)
        offset = torch.tensor(self.pose.center, dtype=torch.float64) - torch.tensor(center, dtype=torch.float64)
        return float((corners @ self.pose.rotation.T + offset).norm(dim=-1).max())


@dataclass(frozen=True)
class CappedCylinder(Primitive):
    """Solid cylinder ``x^2 + z^2 <= radius^2, |y| <= half_height`` in the local frame (axis: local y)."""

    radius: float = 1.0
    half_height: float = 1.0

    def _interval_local(self, o: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        a = d[..., 0] ** 2 + d[..., 2] ** 2
        b = o[..., 0] * d[..., 0] + o[..., 2] * d[..., 2]
        c = o[..., 0] ** 2 + o[..., 2] ** 2 - self.radius ** 2
        along_axis = a == 0
        side_in, side_out = _quadratic_interval(torch.where(along_axis, torch.ones_like(a), a), b, c)
        inf = torch.full_like(a, math.inf)
        side_in = torch.where(along_axis, torch.where(c <= 0, -inf, inf), side_in)
        side_out = torch.where(along_axis, torch.where(c <= 0, inf, -inf), side_out)
        cap_in, cap_out = _slab(o[..., 1], d[..., 1], -self.half_height, self.half_height)
        t_in, t_out = torch.maximum(side_in, cap_in), torch.minimum(side_out, cap_out)
        miss = t_in > t_out
        return torch.where(miss, inf, t_in), torch.where(miss, -inf, t_out)

    def _implicit_local(self, p: Tensor) -> Tensor:
        # Exact capped-cylinder SDF (I. Quilez, "distance functions").
        q = torch.stack([p[..., [0, 2]].norm(dim=-1) - self.radius, p[..., 1].abs() - self.half_height], -1)
        return q.clamp_min(0).norm(dim=-1) + q.amax(dim=-1).clamp_max(0)

    def _normal_local(self, p: Tensor) -> Tensor:
        radial = p.clone()
        radial[..., 1] = 0
        rho = radial.norm(dim=-1, keepdim=True)
        side = radial / rho.clamp_min(1e-12)
        cap = torch.zeros_like(p)
        cap[..., 1] = torch.where(p[..., 1] >= 0, 1.0, -1.0).to(p)
        on_cap = (p[..., 1:2].abs() - self.half_height) > (rho - self.radius)
        return torch.where(on_cap, cap, side)

    def bounding_radius(self, center: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> float:
        # The farthest point lies on a cap rim: max |a + r u| over unit u ⟂ axis n equals
        # sqrt(|a|^2 + r^2 + 2 r |a - (a·n) n|) for the rim centre a.
        r = self.pose.rotation
        n = r[:, 1]
        c = torch.tensor(self.pose.center, dtype=torch.float64) - torch.tensor(center, dtype=torch.float64)
        best = 0.0
        for s in (-1.0, 1.0):
            a = c + s * self.half_height * n
            perp = (a - (a @ n) * n).norm()
            best = max(best, float(torch.sqrt(a @ a + self.radius ** 2 + 2 * self.radius * perp)))
        return best


@dataclass(frozen=True)
class HalfSpaceY(Primitive):
    """The solid ``y >= height`` in world coordinates: the ground, whose top face is ``y = height``.

    World up is ``-y`` (OpenCV habit), so the solid lies *below* its surface. ``pose`` is ignored.
    """

    height: float = 1.0

    def interval(self, origins: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
        return _slab(origins[..., 1], dirs[..., 1], self.height, math.inf)

    def implicit(self, points: Tensor) -> Tensor:
        return self.height - points[..., 1]

    def normal(self, points: Tensor) -> Tensor:
        n = torch.zeros_like(points)
        n[..., 1] = -1.0
        return n

    def bounding_radius(self, center: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> float:
        return math.inf


def first_hit(t_in: Tensor, t_out: Tensor, t_min: float) -> Tensor:
    """Nearest surface crossing after ``t_min``: the entry, else the exit (origin inside), else inf."""
    inf = torch.full_like(t_in, math.inf)
    return torch.where(t_in > t_min, t_in, torch.where(t_out > t_min, t_out, inf))
