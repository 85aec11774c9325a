"""Subject presets: named unions of placed primitives and the height of the ground they stand on.

World frame: OpenCV habit, up is ``-y``; each subject is centred near the origin and stands on the
ground plane ``y = ground_y > 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mvcustom_core.synthetic.primitives import Box, CappedCylinder, Ellipsoid, Pose, Primitive

__all__ = ["SubjectPart", "SubjectPreset", "SUBJECTS"]


@dataclass(frozen=True)
class SubjectPart:
    name: str
    primitive: Primitive


@dataclass(frozen=True)
class SubjectPreset:
    """``parts`` get object ids 2, 3, ... in order; ``ground_y`` is the ground height (y, down).

    ``center`` is the point cameras orbit (the middle of the subject's extent).
    """

    parts: tuple[SubjectPart, ...]
    ground_y: float
    description: str
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)


SUBJECTS: dict[str, SubjectPreset] = {
    # A figurine: an ellipsoid body sunk into a rotated box plinth, a sphere head on top and a tilted
    # rod through the body. The rod is partly hidden inside and behind the body from most views, the
    # head hides part of the body from above, and the plinth corners give sharp silhouette kinks.
    "default": SubjectPreset(
        parts=(
            SubjectPart("body", Ellipsoid(Pose((0.0, 0.05, 0.0), (0.0, 20.0, 0.0)), radii=(0.42, 0.5, 0.34))),
            SubjectPart("plinth", Box(Pose((0.0, 0.65, 0.0), (0.0, 35.0, 0.0)), half_extents=(0.45, 0.15, 0.34))),
            SubjectPart("rod", CappedCylinder(Pose((0.0, -0.05, 0.06), (20.0, 0.0, 65.0)),
                                              radius=0.09, half_height=0.72)),
            SubjectPart("head", Ellipsoid(Pose((0.06, -0.66, -0.02)), radii=(0.25, 0.25, 0.25))),
        ),
        ground_y=0.8,
        description="body ellipsoid, box plinth, tilted rod through the body, sphere head",
    ),
    # One sphere of radius 0.6 at the origin, resting on the ground: silhouettes are exact circles.
    "sphere": SubjectPreset(
        parts=(SubjectPart("sphere", Ellipsoid(Pose(), radii=(0.6, 0.6, 0.6))),),
        ground_y=0.6,
        description="a sphere of radius 0.6 at the origin touching the ground",
    ),
    # Ground and background only (ground at y = 0.8 as for "default").
    "none": SubjectPreset(parts=(), ground_y=0.8, description="no subject: ground and background only"),
}
