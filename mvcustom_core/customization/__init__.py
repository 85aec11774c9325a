"""Subject customization: FeatureNeRF pose-conditioned blocks (MVCustom §3.2, after CustomDiffusion360)."""

from mvcustom_core.customization.featurenerf import FeatureNeRF, FeatureNeRFConfig, FeatureNeRFOutput
from mvcustom_core.customization.pose_block import (
    PoseBlockError, PoseConditionedBlock, PoseContext, install_pose_blocks, pose_blocks, remove_pose_blocks)

__all__ = ["FeatureNeRF", "FeatureNeRFConfig", "FeatureNeRFOutput", "PoseBlockError", "PoseConditionedBlock",
           "PoseContext", "install_pose_blocks", "pose_blocks", "remove_pose_blocks"]

# Subject customization (engineer J): token, reference poses, training, customization file.
from mvcustom_core.customization.file_format import (  # noqa: E402
    BackboneMismatchError, Customization, CustomizationFileError, apply_customization, backbone_fingerprint,
    load_customization, save_customization)
from mvcustom_core.customization.reference_poses import (  # noqa: E402
    ReferenceInputError, ReferenceSet, check_reference_inputs, estimate_reference_cameras, prepare_reference_set,
    reference_cameras_from_file, turntable_reference_cameras)
from mvcustom_core.customization.token import (  # noqa: E402
    DEFAULT_TOKEN, SubjectTokenError, add_subject_token, remove_subject_token, save_comfy_embedding)
from mvcustom_core.customization.training import (  # noqa: E402
    TrainingConfig, TrainingError, TrainingResult, train_customization)

__all__ += ["BackboneMismatchError", "Customization", "CustomizationFileError", "apply_customization",
            "backbone_fingerprint", "load_customization", "save_customization", "ReferenceInputError",
            "ReferenceSet", "check_reference_inputs", "estimate_reference_cameras", "prepare_reference_set",
            "reference_cameras_from_file", "turntable_reference_cameras", "DEFAULT_TOKEN", "SubjectTokenError",
            "add_subject_token", "remove_subject_token", "save_comfy_embedding", "TrainingConfig", "TrainingError",
            "TrainingResult", "train_customization"]
