"""Procedural ground-truth scene: a textured subject on a textured ground plane under a sky at infinity.

Exact RGB, z-depth, subject mask, world points and object ids for any :class:`CameraSet`; see
``docs/synthetic.md``.
"""

from mvcustom_core.synthetic.scene import (BACKGROUND_ID, FIRST_PART_ID, GROUND_ID, SceneError, SceneRender,
                                           SyntheticScene)
from mvcustom_core.synthetic.subjects import SUBJECTS
from mvcustom_core.synthetic.turntable import turntable_cameras

__all__ = ["SyntheticScene", "SceneRender", "SceneError", "turntable_cameras", "SUBJECTS", "BACKGROUND_ID",
           "GROUND_ID", "FIRST_PART_ID"]
