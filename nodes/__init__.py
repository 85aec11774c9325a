"""Thin V3 adapters: ComfyUI values in, one ``mvcustom_core`` call, ComfyUI values out.

Import these modules relatively from the pack (``from .nodes...``); never as top-level ``nodes``,
which inside ComfyUI is the host's own module. Only :mod:`._host` imports ComfyUI.
"""
