"""Tier 2: the node layer against a fake ComfyUI.

The fake host modules go into ``sys.modules`` for this directory's tests only, the pack is imported
as a package (so its relative imports work, as in ComfyUI), and everything is removed afterwards so
no other test sees a ``comfy`` or ``folder_paths`` module.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
PACK_NAME = "mvcustom_pack_under_test"


def _load_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(module)
    return module


fake_comfy = _load_by_path("mvc_fake_comfy", HERE / "fake_comfy.py")


@pytest.fixture(scope="session")
def fake_state(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy")
    dirs = {k: base / k for k in ("input", "output", "temp")}
    for d in dirs.values():
        d.mkdir()
    return fake_comfy.FolderState(str(dirs["input"]), str(dirs["output"]), str(dirs["temp"]))


@pytest.fixture(scope="session")
def host(fake_state):
    """The fake host modules, installed in ``sys.modules`` for the session of node tests."""
    modules = fake_comfy.build_modules(fake_state)
    with pytest.MonkeyPatch.context() as mp:
        for name, module in modules.items():
            mp.setitem(sys.modules, name, module)
        yield modules
        for name in [m for m in sys.modules if m == PACK_NAME or m.startswith(PACK_NAME + ".")]:
            del sys.modules[name]


@pytest.fixture(scope="session")
def pack(host):
    """The repo imported the way ComfyUI imports a custom-node folder: a package from its __init__."""
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def comfy_dirs(fake_state, tmp_path):
    """Fresh input/output/temp folders for one test (the fake folder_paths reads them live)."""
    saved = (fake_state.input_dir, fake_state.output_dir, fake_state.temp_dir)
    for k in ("input", "output", "temp"):
        (tmp_path / k).mkdir()
    fake_state.input_dir, fake_state.output_dir, fake_state.temp_dir = (
        str(tmp_path / "input"), str(tmp_path / "output"), str(tmp_path / "temp"))
    yield {k: tmp_path / k for k in ("input", "output", "temp")}
    fake_state.input_dir, fake_state.output_dir, fake_state.temp_dir = saved


@pytest.fixture(scope="session")
def node_classes(pack):
    """Every node class the extension registers, by node id."""
    import asyncio

    ext = asyncio.run(pack.comfy_entrypoint())
    nodes = asyncio.run(ext.get_node_list())
    return {cls.define_schema().node_id: cls for cls in nodes}


def widget_defaults(cls) -> dict:
    """``{input id: default}`` of every input of ``cls`` that has a default (what a fresh node holds)."""
    return {i.id: i.default for i in cls.GET_SCHEMA().inputs or [] if getattr(i, "default", None) is not None}


def run_node(cls, **inputs):
    """``cls.execute`` with the schema defaults overridden by ``inputs``; returns the NodeOutput."""
    return cls.execute(**{**widget_defaults(cls), **inputs})


@pytest.fixture
def node(node_classes):
    """``node("MVC_...")`` -> the registered class with that node id."""
    return node_classes.__getitem__


@pytest.fixture
def run():
    """``run(cls, **inputs)``: execute with schema defaults overridden by ``inputs``."""
    return run_node


@pytest.fixture
def mm(host):
    """The fake ``comfy.model_management`` (interrupt flag, intermediate device)."""
    return host["comfy.model_management"]


@pytest.fixture
def bridge(pack):
    """The pack's ``nodes.bridge`` module (prepare_backbone, the MODEL/CLIP/VAE views)."""
    return importlib.import_module(f"{PACK_NAME}.nodes.bridge")


EXTENSIONS = {".ckpt", ".pt", ".bin", ".pth", ".safetensors", ".sft"}


@pytest.fixture
def models(host, tmp_path, monkeypatch):
    """ComfyUI's models/ folder in tmp_path, with the folder_paths / model management / ModelPatcher doubles."""
    fp, mm = host["folder_paths"], host["comfy.model_management"]
    models_dir = tmp_path / "models"
    (models_dir / "checkpoints").mkdir(parents=True)
    names = {"checkpoints": ([str(models_dir / "checkpoints")], EXTENSIONS)}

    def get_filename_list(key):
        found = []
        for folder in names[key][0]:
            for dirpath, _, files in os.walk(folder):
                found += [os.path.relpath(os.path.join(dirpath, f), folder).replace(os.sep, "/") for f in files
                          if not names[key][1] or os.path.splitext(f)[1] in names[key][1]]
        return sorted(set(found))

    def get_full_path(key, name):
        if key not in names:
            return None
        for folder in names[key][0]:
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
        return None

    def add_model_folder_path(key, path, is_default=False):
        paths = names.setdefault(key, ([], set()))[0]
        if path not in paths:
            paths.insert(0, path) if is_default else paths.append(path)

    for name, value in dict(models_dir=str(models_dir), supported_pt_extensions=EXTENSIONS,
                            folder_names_and_paths=names, get_filename_list=get_filename_list,
                            get_full_path=get_full_path, add_model_folder_path=add_model_folder_path,
                            get_folder_paths=lambda key: list(names[key][0])).items():
        monkeypatch.setattr(fp, name, value, raising=False)
    loaded = []
    monkeypatch.setattr(mm, "unet_offload_device", lambda: torch.device("cpu"), raising=False)
    monkeypatch.setattr(mm, "unet_dtype", lambda *a, **k: torch.float32, raising=False)
    monkeypatch.setattr(mm, "vae_dtype", lambda *a, **k: torch.float32, raising=False)
    memory = []

    def load_models_gpu(models, memory_required=0, **kwargs):
        for patcher in models:
            patcher.load(patcher.load_device)
        loaded.append(list(models))
        memory.append(memory_required)

    monkeypatch.setattr(mm, "load_models_gpu", load_models_gpu, raising=False)
    return types.SimpleNamespace(dir=models_dir, folders=names, loaded=loaded, memory=memory)
