"""The pack's one camera representation.

Convention (every module past a file-format edge assumes exactly this):

- **Axes: OpenCV.** In camera space x points right, y points down, z points forward (the viewing
  direction). A point in front of the camera has z > 0.
- **Extrinsics: camera-to-world.** ``c2w[f]`` is a 4x4 rigid transform; ``X_world = c2w @ X_cam``.
  The columns of ``c2w[f, :3, :3]`` are the camera's right, down and forward axes in world
  coordinates and ``c2w[f, :3, 3]`` is the camera centre.
- **Intrinsics: pixels.** ``K[f] = [[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` maps camera space to pixel
  coordinates of an image of ``image_size = (H, W)`` pixels.
- **Pixel centres at +0.5.** Continuous pixel coordinates put (0, 0) at the top-left *corner* of the
  top-left pixel, so the centre of pixel (row i, column j) is (u, v) = (j + 0.5, i + 0.5). A centred
  principal point is therefore (W / 2, H / 2).
- **World units** are whatever the source uses; :mod:`mvcustom_core.cameras.normalize` rescales a
  set so all cameras lie within radius 1 of the scene centre, as CustomDiffusion360 does.
- **dtype.** Camera math is cheap, so file importers produce float64; cast with :meth:`CameraSet.to`.

File formats (RealEstate10K, CAMERACTRL_POSES, transforms.json, COLMAP, CO3D) convert to and from
this representation in :mod:`mvcustom_core.cameras.formats`; nothing past that edge sees a format.
"""

from __future__ import annotations

import numbers
import operator
from dataclasses import dataclass
from typing import Sequence

import torch
from kornia.geometry.linalg import inverse_transformation, transform_points
from torch import Tensor

from mvcustom_core.checks import check_finite, check_shape

__all__ = ["CameraSet", "CameraError", "OPENCV_TO_OPENGL"]

# diag(1, -1, -1): flips y and z. Right-multiplying an OpenCV c2w by it gives the OpenGL/NeRF c2w
# (x right, y up, z backward) of the same camera, and vice versa (the matrix is its own inverse).
OPENCV_TO_OPENGL = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


class CameraError(ValueError):
    """A camera set that breaks the convention (bad rotation, non-positive focal, NaN, ...)."""


@dataclass(frozen=True)
class CameraSet:
    """F pinhole cameras in the pack's convention (see the module docstring).

    Args:
        K: ``[F, 3, 3]`` intrinsics in pixels.
        c2w: ``[F, 4, 4]`` camera-to-world rigid transforms, OpenCV axes.
        image_size: ``(H, W)`` in pixels, shared by all frames.

    Example:
        >>> cams = CameraSet.from_fov(torch.eye(4).repeat(3, 1, 1), fov_y_deg=60.0, image_size=(64, 96))
        >>> cams.num_frames, tuple(cams.K.shape)
        (3, (3, 3, 3))
    """

    K: Tensor
    c2w: Tensor
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        check_shape(self.K, "F 3 3", "K")
        check_shape(self.c2w, "F 4 4", "c2w")
        if self.K.shape[0] != self.c2w.shape[0]:
            raise CameraError(f"K has {self.K.shape[0]} frames but c2w has {self.c2w.shape[0]}")
        if self.K.shape[0] == 0:
            raise CameraError("a camera set needs at least one frame")
        h, w = self.image_size
        if int(h) <= 0 or int(w) <= 0:
            raise CameraError(f"image_size must be positive (H, W), got {self.image_size}")
        object.__setattr__(self, "image_size", (int(h), int(w)))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_w2c(cls, K: Tensor, w2c: Tensor, image_size: tuple[int, int]) -> "CameraSet":
        """Build from world-to-camera extrinsics ``w2c: [F, 4, 4]`` (or ``[F, 3, 4]``)."""
        return cls(K=K, c2w=inverse_transformation(_to_4x4(w2c)), image_size=image_size)

    @classmethod
    def from_fov(
        cls, c2w: Tensor, fov_y_deg: float | Tensor, image_size: tuple[int, int]
    ) -> "CameraSet":
        """Square-pixel cameras with a centred principal point and a vertical field of view.

        Args:
            c2w: ``[F, 4, 4]``.
            fov_y_deg: scalar or ``[F]`` vertical field of view in degrees.
        """
        h, w = image_size
        fov = torch.as_tensor(fov_y_deg, dtype=c2w.dtype, device=c2w.device).expand(c2w.shape[0])
        fy = 0.5 * h / torch.tan(torch.deg2rad(fov) / 2)
        return cls(K=intrinsics_matrix(fy, fy, w / 2.0, h / 2.0), c2w=c2w, image_size=image_size)

    @classmethod
    def concat(cls, sets: Sequence["CameraSet"]) -> "CameraSet":
        """Frames of several sets one after another; all must share an image size."""
        if not sets:
            raise CameraError("concat needs at least one camera set")
        sizes = {s.image_size for s in sets}
        if len(sizes) != 1:
            raise CameraError(f"cannot concatenate camera sets with different image sizes {sorted(sizes)}")
        dtype = sets[0].c2w.dtype
        return cls(
            K=torch.cat([s.K.to(dtype) for s in sets]),
            c2w=torch.cat([s.c2w.to(dtype) for s in sets]),
            image_size=sets[0].image_size,
        )

    # ------------------------------------------------------------------ views
    @property
    def num_frames(self) -> int:
        return int(self.c2w.shape[0])

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, index: int | slice | Tensor | Sequence[int]) -> "CameraSet":
        """A sub-set of frames; an integer index keeps the frame axis (``[1, ...]``).

        Integers include numpy integers and 0-d integer tensors (e.g. an ``argmax``), which would otherwise
        drop the frame axis.
        """
        if isinstance(index, numbers.Integral) or (isinstance(index, Tensor) and index.dim() == 0):
            i = operator.index(index)
            index = slice(i, i + 1 if i != -1 else None)
        return CameraSet(K=self.K[index], c2w=self.c2w[index], image_size=self.image_size)

    @property
    def w2c(self) -> Tensor:
        """``[F, 4, 4]`` world-to-camera."""
        return inverse_transformation(self.c2w)

    @property
    def centers(self) -> Tensor:
        """``[F, 3]`` camera centres in world coordinates."""
        return self.c2w[:, :3, 3]

    @property
    def rotations(self) -> Tensor:
        """``[F, 3, 3]`` camera-to-world rotations (columns: right, down, forward)."""
        return self.c2w[:, :3, :3]

    @property
    def forward(self) -> Tensor:
        """``[F, 3]`` unit viewing directions (+z of each camera) in world coordinates."""
        return self.c2w[:, :3, 2]

    @property
    def height(self) -> int:
        return self.image_size[0]

    @property
    def width(self) -> int:
        return self.image_size[1]

    def normalized_intrinsics(self) -> Tensor:
        """``[F, 4]`` (fx / W, fy / H, cx / W, cy / H), the RealEstate10K/CameraCtrl layout."""
        h, w = self.image_size
        k = self.K
        return torch.stack([k[:, 0, 0] / w, k[:, 1, 1] / h, k[:, 0, 2] / w, k[:, 1, 2] / h], dim=-1)

    def fov_y_deg(self) -> Tensor:
        """``[F]`` vertical field of view in degrees."""
        return torch.rad2deg(2 * torch.atan(0.5 * self.height / self.K[:, 1, 1]))

    # ------------------------------------------------------------------ transforms
    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "CameraSet":
        return CameraSet(K=self.K.to(device=device, dtype=dtype), c2w=self.c2w.to(device=device, dtype=dtype),
                         image_size=self.image_size)

    def with_image_size(self, image_size: tuple[int, int]) -> "CameraSet":
        """The same cameras rendered at another resolution: intrinsics scale with each axis.

        With pixel centres at +0.5 a pure rescale maps continuous coordinates by (W'/W, H'/H), so
        fx, cx scale by W'/W and fy, cy by H'/H with no half-pixel shift.
        """
        h, w = self.image_size
        nh, nw = image_size
        scale = torch.tensor([nw / w, nh / h, 1.0], dtype=self.K.dtype, device=self.K.device)
        return CameraSet(K=self.K * scale[None, :, None], c2w=self.c2w, image_size=(nh, nw))

    def transformed(self, world_from_old: Tensor, scale: float | Tensor = 1.0) -> "CameraSet":
        """Move every camera by a rigid transform then scale the world (centres times ``scale``).

        Args:
            world_from_old: ``[4, 4]`` rigid transform applied to the old world.
            scale: positive similarity scale applied after the transform.
        """
        c2w = world_from_old.to(self.c2w) @ self.c2w
        c2w = c2w.clone()
        c2w[:, :3, 3] = c2w[:, :3, 3] * torch.as_tensor(scale, dtype=c2w.dtype, device=c2w.device)
        return CameraSet(K=self.K, c2w=c2w, image_size=self.image_size)

    # ------------------------------------------------------------------ geometry
    def world_to_camera(self, points: Tensor) -> Tensor:
        """``points: [F, N, 3]`` world -> ``[F, N, 3]`` camera coordinates."""
        return transform_points(self.w2c.to(points), points)

    def project(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Project world points into every frame.

        Args:
            points: ``[F, N, 3]`` (or ``[N, 3]``, shared by all frames) world coordinates.

        Returns:
            uv: ``[F, N, 2]`` continuous pixel coordinates (pixel centres at +0.5).
            depth: ``[F, N]`` camera-space z (positive in front of the camera).
        """
        if points.dim() == 2:
            points = points.expand(self.num_frames, -1, -1)
        cam = self.world_to_camera(points)
        z = cam[..., 2]
        proj = cam @ self.K.to(points).transpose(-1, -2)
        uv = proj[..., :2] / z.unsqueeze(-1)
        return uv, z

    def unproject(self, uv: Tensor, depth: Tensor) -> Tensor:
        """Inverse of :meth:`project`: pixel coordinates and z-depth to world points.

        Args:
            uv: ``[F, N, 2]`` pixel coordinates.
            depth: ``[F, N]`` camera-space z.

        Returns:
            ``[F, N, 3]`` world coordinates.
        """
        ones = torch.ones_like(uv[..., :1])
        rays = torch.cat([uv, ones], dim=-1) @ torch.linalg.inv(self.K.to(uv)).transpose(-1, -2)
        cam = rays * depth.unsqueeze(-1)
        return transform_points(self.c2w.to(uv), cam)

    def pixel_centers(self, dtype: torch.dtype | None = None) -> Tensor:
        """``[H, W, 2]`` (u, v) continuous coordinates of every pixel centre."""
        h, w = self.image_size
        dtype = dtype or self.K.dtype
        v, u = torch.meshgrid(torch.arange(h, dtype=dtype, device=self.K.device) + 0.5,
                              torch.arange(w, dtype=dtype, device=self.K.device) + 0.5, indexing="ij")
        return torch.stack([u, v], dim=-1)

    def ray_directions(self, dtype: torch.dtype | None = None) -> Tensor:
        """``[F, H, W, 3]`` unit world-space ray directions through every pixel centre."""
        uv = self.pixel_centers(dtype).reshape(1, -1, 2).expand(self.num_frames, -1, -1)
        k_inv = torch.linalg.inv(self.K.to(uv))
        d_cam = torch.cat([uv, torch.ones_like(uv[..., :1])], dim=-1) @ k_inv.transpose(-1, -2)
        d = d_cam @ self.c2w[:, :3, :3].to(uv).transpose(-1, -2)
        d = d / d.norm(dim=-1, keepdim=True)
        return d.reshape(self.num_frames, self.height, self.width, 3)

    # ------------------------------------------------------------------ validation
    def validate(self, *, where: str = "cameras", atol: float = 1e-4) -> "CameraSet":
        """Raise :class:`CameraError` naming ``where`` and the frame if the set breaks the convention.

        Checks: finite values, positive focal lengths, orthonormal right-handed rotations (within
        ``atol``), and a ``[0, 0, 0, 1]`` bottom row.
        """
        check_finite(self.K, f"{where}: intrinsics")
        check_finite(self.c2w, f"{where}: camera-to-world")
        fx, fy = self.K[:, 0, 0], self.K[:, 1, 1]
        bad = torch.nonzero((fx <= 0) | (fy <= 0)).flatten()
        if len(bad):
            f = int(bad[0])
            raise CameraError(f"{where}: frame {f} has a non-positive focal length "
                              f"(fx={float(fx[f]):g}, fy={float(fy[f]):g})")
        r = self.c2w[:, :3, :3].double()
        eye = torch.eye(3, dtype=r.dtype, device=r.device)
        ortho_err = (r.transpose(-1, -2) @ r - eye).abs().amax(dim=(-1, -2))
        det = torch.linalg.det(r)
        bad = torch.nonzero((ortho_err > atol) | (det < 0)).flatten()
        if len(bad):
            f = int(bad[0])
            raise CameraError(f"{where}: frame {f} rotation is not orthonormal and right-handed "
                              f"(|RᵀR − I|max = {float(ortho_err[f]):.3g}, det = {float(det[f]):.4g})")
        bottom = self.c2w[:, 3, :].double() - torch.tensor([0, 0, 0, 1.0], dtype=torch.float64,
                                                            device=self.c2w.device)
        bad = torch.nonzero(bottom.abs().amax(dim=-1) > atol).flatten()
        if len(bad):
            raise CameraError(f"{where}: frame {int(bad[0])} bottom row is not [0, 0, 0, 1]")
        return self


def intrinsics_matrix(fx: Tensor, fy: Tensor, cx: Tensor | float, cy: Tensor | float) -> Tensor:
    """``[F, 3, 3]`` pixel intrinsics from per-frame ``[F]`` focal lengths and principal points."""
    fx = torch.as_tensor(fx)
    fy = torch.as_tensor(fy, dtype=fx.dtype, device=fx.device).expand_as(fx)
    cx = torch.as_tensor(cx, dtype=fx.dtype, device=fx.device).expand_as(fx)
    cy = torch.as_tensor(cy, dtype=fx.dtype, device=fx.device).expand_as(fx)
    K = torch.zeros(*fx.shape, 3, 3, dtype=fx.dtype, device=fx.device)
    K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2], K[..., 2, 2] = fx, fy, cx, cy, 1.0
    return K


def _to_4x4(m: Tensor) -> Tensor:
    """``[F, 3, 4]`` or ``[F, 4, 4]`` -> ``[F, 4, 4]`` with a ``[0, 0, 0, 1]`` bottom row."""
    if m.shape[-2:] == (4, 4):
        return m
    check_shape(m, "F 3 4", "extrinsics")
    bottom = torch.zeros(*m.shape[:-2], 1, 4, dtype=m.dtype, device=m.device)
    bottom[..., 0, 3] = 1.0
    return torch.cat([m, bottom], dim=-2)
