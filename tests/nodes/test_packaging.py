"""What ComfyUI-Manager and the registry read: requirements.txt, pyproject.toml, LICENSE, the icon."""

from __future__ import annotations

import ast
import hashlib
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

from packaging.requirements import Requirement

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST_BUILDS = {"torch", "torchvision", "torchaudio"}  # the user's own builds, which pip must never replace
# Packages ComfyUI itself requires: an upper bound or a pin on one of them could downgrade the host's copy.
HOST_SHARED = {"numpy", "pillow", "safetensors", "transformers", "kornia", "tokenizers", "einops", "scipy"}
# Imported by the core but installed by the user on purpose, with the reason (the docs say how).
USER_INSTALLED = {"dreamsim": "evaluation only; it requires torchvision, which the pack never installs"}
# Import names that differ from the distribution's name on PyPI.
DISTRIBUTION_OF = {"PIL": "pillow", "mpl_toolkits": "matplotlib"}
# md5 of https://www.apache.org/licenses/LICENSE-2.0.txt, the standard text.
APACHE_2_0_MD5 = "3b83ef96387f14655fc854ddc3c6bd57"


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _requirements() -> list[Requirement]:
    lines = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    return [Requirement(line) for line in (ln.strip() for ln in lines) if line and not line.startswith("#")]


def test_pyproject_dependencies_are_requirements_txt():
    from setuptools.config.pyprojecttoml import read_configuration

    project = _pyproject()["project"]
    assert "dependencies" in project.get("dynamic", []) and "dependencies" not in project
    assert _pyproject()["tool"]["setuptools"]["dynamic"]["dependencies"] == {"file": ["requirements.txt"]}
    resolved = read_configuration(REPO_ROOT / "pyproject.toml", expand=True)["project"]["dependencies"]
    assert [Requirement(r) for r in resolved] == _requirements()
    assert {r.name for r in _requirements()} >= {"diffusers", "transformers", "kornia", "safetensors"}


def test_no_torch_no_pins_no_upper_bounds_on_host_packages():
    extras = _pyproject()["project"].get("optional-dependencies", {})
    every = _requirements() + [Requirement(r) for group in extras.values() for r in group]
    for req in every:
        name = req.name.lower()
        assert name not in HOST_BUILDS, f"{req}: torch is ComfyUI's own build"
        assert req.url is None and not req.marker, req
        for spec in req.specifier:
            assert spec.operator not in ("==", "===", "~="), f"{req}: pinned"
            if name in HOST_SHARED:
                assert spec.operator in (">=", ">", "!="), f"{req}: bounds ComfyUI's own {name} from above"


def test_license_is_the_apache_2_0_text_the_project_declares():
    project = _pyproject()["project"]
    assert project["license"] == {"text": "Apache-2.0"}
    assert "License :: OSI Approved :: Apache Software License" in project["classifiers"]
    assert hashlib.md5((REPO_ROOT / "LICENSE").read_bytes()).hexdigest() == APACHE_2_0_MD5


def test_icon_is_a_square_svg_of_at_most_400_px_in_this_repository():
    config = _pyproject()
    repo = config["project"]["urls"]["Repository"].removeprefix("https://github.com/")
    url = config["tool"]["comfy"]["Icon"]
    prefix = f"https://raw.githubusercontent.com/{repo}/main/"
    assert url.startswith(prefix), url
    path = REPO_ROOT / url.removeprefix(prefix)
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    width, height = int(root.get("width")), int(root.get("height"))
    assert width == height <= 400 and root.get("viewBox") == f"0 0 {width} {height}"
    assert len(root.findall(".//{http://www.w3.org/2000/svg}polygon")) >= 4  # the camera frustums


def _core_imports(*folders: str) -> dict[str, str]:
    """Top-level third-party modules imported anywhere in mvcustom_core (and ``folders``; lazy imports in functions
    included) -> one file importing each."""
    found = {}
    for path in sorted(p for f in ("mvcustom_core", *folders) for p in (REPO_ROOT / f).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "mvcustom_core":
                    found.setdefault(top, path.relative_to(REPO_ROOT).as_posix())
    return found


def test_every_package_the_core_imports_is_declared():
    """requirements.txt or an extra names every package the core imports (PyAV for backbone video training was
    missing from 'train'), except the host's torch and the packages users install on purpose."""
    extras = _pyproject()["project"].get("optional-dependencies", {})
    declared = {r.name.lower() for r in _requirements()}
    declared |= {Requirement(r).name.lower() for group in extras.values() for r in group}
    imports = _core_imports()
    assert "av" in imports and "accelerate" in imports  # the scan sees imports inside functions
    undeclared = sorted(f"{DISTRIBUTION_OF.get(m, m)} ({where})" for m, where in imports.items()
                        if m not in HOST_BUILDS | USER_INSTALLED.keys()
                        and DISTRIBUTION_OF.get(m, m).lower() not in declared)
    assert not undeclared, f"imported by the core, declared nowhere: {undeclared}"


def test_every_package_an_extra_declares_is_imported():
    """The user-facing extras install only what the code uses (peft sat in 'train' with nothing importing it)."""
    extras = _pyproject()["project"]["optional-dependencies"]
    imported = {DISTRIBUTION_OF.get(m, m).lower() for m in _core_imports("scripts", "benchmarks")}
    unused = sorted(f"{r} ({group})" for group in ("sfm", "fast", "train") for r in extras[group]
                    if Requirement(r).name.lower() not in imported)
    assert not unused, f"declared, imported by nothing: {unused}"


def test_backbone_training_extra_holds_what_backbone_training_imports():
    train = {Requirement(r).name.lower() for r in _pyproject()["project"]["optional-dependencies"]["train"]}
    assert {"accelerate", "av"} <= train


def test_the_transformers_floor_is_the_one_the_depth_models_need():
    """Depth Anything's metric head arrived in transformers 4.45; with 4.40 a metric file silently ran the relative
    head (its values read as metric depth: inverted)."""
    from mvcustom_core.depth.loading import MIN_TRANSFORMERS

    (req,) = [r for r in _requirements() if r.name == "transformers"]
    floors = [tuple(int(p) for p in spec.version.split(".")[:2]) for spec in req.specifier if spec.operator == ">="]
    assert floors and max(floors) >= MIN_TRANSFORMERS, req
