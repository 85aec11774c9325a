"""ComfyUI-MVCustom: registers the pack's V3 extension with ComfyUI, and nothing else.

ComfyUI imports this file as a package whose name is derived from the folder path, so the node
modules are reached with relative imports (``from .nodes...``). Our ``nodes/`` folder must never be
imported as top-level ``nodes``: that name is ComfyUI's own ``nodes.py``.

The library ``mvcustom_core`` is imported absolutely everywhere (it is also a standalone package).
Rather than putting the pack folder on ``sys.path``, which would also expose ``nodes``, ``tests``,
``scripts`` ... as top-level names to every other pack, we register exactly one module: the pack's own
``mvcustom_core`` under that name. Submodules then resolve through its ``__path__``. If some
``mvcustom_core`` was imported before us (a pip install, a second checkout) we keep it and say so,
because two copies in one process would split isinstance checks.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

_CORE_NAME = "mvcustom_core"
_CORE_DIR = Path(__file__).resolve().parent / _CORE_NAME


def _register_core() -> None:
    loaded = sys.modules.get(_CORE_NAME)
    if loaded is not None:
        where = Path(getattr(loaded, "__file__", "") or "").resolve().parent
        if where != _CORE_DIR:
            logging.warning("ComfyUI-MVCustom: using the already imported %s from %s, not %s",
                            _CORE_NAME, where, _CORE_DIR)
        return
    spec = importlib.util.spec_from_file_location(
        _CORE_NAME, _CORE_DIR / "__init__.py", submodule_search_locations=[str(_CORE_DIR)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[_CORE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[_CORE_NAME]
        raise


_register_core()

# Served by ComfyUI under /extensions/<pack folder>/ (only .js files); adds the pose-file upload button.
WEB_DIRECTORY = "./web"

# Outside ComfyUI (pytest's --doctest-modules walking the repo root, an IDE indexer) there is no
# comfy_api and no parent package, so only the core is registered and the entrypoint explains why.
if __package__ and importlib.util.find_spec("comfy_api") is not None:
    from .nodes.extension import comfy_entrypoint  # noqa: F401
else:
    async def comfy_entrypoint():
        raise RuntimeError("ComfyUI-MVCustom must be loaded by ComfyUI as a custom-node package "
                           "(comfy_api is not importable here)")
