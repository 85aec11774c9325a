"""Subject customization: FeatureNeRF pose-conditioned blocks (MVCustom §3.2, after CustomDiffusion360)."""

from mvcustom_core.customization.featurenerf import FeatureNeRF, FeatureNeRFConfig, FeatureNeRFOutput
from mvcustom_core.customization.pose_block import (
    PoseBlockError, PoseConditionedBlock, PoseContext, install_pose_blocks, pose_blocks, remove_pose_blocks)

__all__ = ["FeatureNeRF", "FeatureNeRFConfig", "FeatureNeRFOutput", "PoseBlockError", "PoseConditionedBlock",
           "PoseContext", "install_pose_blocks", "pose_blocks", "remove_pose_blocks"]
