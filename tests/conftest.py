"""Shared fixtures: seeded generators, dtype tolerances, and the repo root."""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Two cores on the dev machines and in CI: keep torch from oversubscribing them (an explicit
# OMP_NUM_THREADS, e.g. 1 when several suites share the machine, wins).
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 0)) or max(1, min(2, os.cpu_count() or 1)))

# Per-dtype comparison tolerances (rtol, atol), kornia's table.
TOLERANCES = {
    torch.float64: (1e-9, 1e-9),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (7.8e-3, 7.8e-3),
}


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def realestate_pose_files() -> list[Path]:
    files = sorted((SHARED_DATA / "realestate10k_poses").glob("*.txt"))
    if not files:
        pytest.skip(f"no RealEstate10K pose files under {SHARED_DATA} (../shared beside the repo)")
    return files


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny-model tests: on two busy cores a second thread only adds waiting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def subject_turntable():
    """``(views, size=64) -> (SceneRender, CameraSet)``: a subject alone (synthetic world seed 1, no ground) on a
    turntable 20° up at radius 2.5, the photos most customization tests train on."""
    from mvcustom_core.synthetic import SyntheticScene, turntable_cameras

    def render(views: int, size: int = 64):
        cams = turntable_cameras(views, elevation_deg=20.0, radius=2.5, image_size=(size, size), fov_y_deg=45.0)
        return SyntheticScene(seed=1, ground=False).render(cams), cams

    return render


def import_file(path: Path, name: str | None = None):
    """Import a Python file by path as a fresh module (scripts/ and test-support files: the suite runs with
    --import-mode=importlib, so they are not on sys.path)."""
    name = name or f"mvc_file_{Path(path).stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while a class is built
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


@pytest.fixture(scope="session")
def import_by_path():
    """:func:`import_file`: ``import_by_path(path) -> module``."""
    return import_file


@pytest.fixture
def imported_roots():
    """``imported_roots(path) -> set`` of top-level packages a Python file imports absolutely (AST scan)."""
    def roots_of(path: Path) -> set[str]:
        roots = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                roots |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots.add(node.module.split(".")[0])
        return roots

    return roots_of


@pytest.fixture(scope="module")
def unet():
    """The tiny random SD1.5-shaped ``UNetMotionModel`` (text width 32), in eval mode."""
    from mvcustom_core.backbone.tiny import tiny_backbone

    return tiny_backbone(0).unet.eval()


@pytest.fixture(scope="module")
def text():
    """``(cond, uncond)`` random text states ``[1, 5, 32]`` for :func:`unet`."""
    g = torch.Generator().manual_seed(7)
    return torch.randn(1, 5, 32, generator=g), torch.randn(1, 5, 32, generator=g)


def _customize_tiny(unet, ref_cams, *, fuse_identity: bool = False, seed: int = 0):
    """A copy of the tiny ``unet`` with one pose block that sees geometry, and its captured reference bank.

    The block's FeatureNeRF decoder gets large random weights (so the field has structure); with
    ``fuse_identity`` its fusion layer passes the rendered features through as well. The bank is captured
    from seeded random latents and text for the 4 ``ref_cams``. Everything is drawn from ``seed``.

    Returns:
        ``(model, context, block)``.
    """
    import copy

    from mvcustom_core.customization.pose_block import PoseContext, install_pose_blocks, pose_blocks

    model, ctx = copy.deepcopy(unet), PoseContext()
    with torch.random.fork_rng(devices=[]):  # FeatureNeRF's MLPs draw their initial weights from the global RNG
        torch.manual_seed(seed)
        install_pose_blocks(model, ctx, "0", config_overrides={"num_samples": 8})
    block = next(pose_blocks(model))
    with torch.no_grad():
        block.featurenerf.decoder.weight.normal_(0, 2.0, generator=torch.Generator().manual_seed(seed))
        if fuse_identity:
            c = block.fuse.out_features
            block.fuse.weight[:, c:] = torch.eye(c)
    g = torch.Generator().manual_seed(seed + 1)
    ctx.begin_capture()
    with torch.no_grad():
        model(torch.randn(1, 4, 4, 8, 8, generator=g), 50, encoder_hidden_states=torch.randn(4, 5, 32, generator=g))
    ctx.end_capture(ref_cams)
    return model, ctx, block


@pytest.fixture(scope="session")
def customize_tiny():
    """:func:`_customize_tiny`: ``customize_tiny(unet, ref_cams, fuse_identity=False, seed=0) -> (model, context,
    block)``."""
    return _customize_tiny
