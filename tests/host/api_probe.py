"""What tier 3 compares between the real ``comfy_api.latest`` and the tier-2 fake: constructor parameter names.

Plain Python with no test-framework imports: ``test_fake_matches_host.py`` runs :func:`describe_api` on the fake
in-process and on the real API in a subprocess with ComfyUI's interpreter, so both sides are read by one function.
"""

from __future__ import annotations

import inspect

TYPES = ["Int", "Float", "String", "Boolean", "Combo", "Image", "Mask", "Latent", "Model", "Vae", "Clip",
         "Conditioning", "AnyType"]


def _params(f) -> list[str]:
    return [n for n, p in inspect.signature(f).parameters.items()
            if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def describe_api(io, ui) -> dict:
    """Parameter names of the io/ui constructors the pack uses, io types, and the UploadType/Hidden enums."""
    out = {}
    for name in TYPES:
        t = getattr(io, name)
        out[f"io.{name}.Input"] = _params(t.Input.__init__)
        out[f"io.{name}.Output"] = _params(t.Output.__init__)
        out[f"io.{name}.io_type"] = t.io_type
    custom = io.Custom("X")
    out["io.Custom.Input"], out["io.Custom.Output"] = _params(custom.Input.__init__), _params(custom.Output.__init__)
    out["io.Schema"] = _params(io.Schema)
    out["io.NodeOutput"] = _params(io.NodeOutput.__init__)
    out["ui.PreviewImage"] = _params(ui.PreviewImage.__init__)
    out["ui.PreviewText"] = _params(ui.PreviewText.__init__)
    out["io.UploadType"] = {e.name: e.value for e in io.UploadType}
    out["io.Hidden"] = {e.name: e.value for e in io.Hidden}
    return out
