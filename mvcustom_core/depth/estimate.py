"""Run a depth model on pictures: the model's own input preparation, output back at the picture's size.

Each model carries an :class:`~mvcustom_core.depth.loading.InputSpec` (defaults per family, or its folder's
``preprocessor_config.json``):

* Depth Anything (the original ``infer_image``): resize keeping the aspect ratio so that both sides are at least
  518, rounded to multiples of 14, bicubic; ImageNet mean / std. The output is resized back bicubically.
  (transformers' ``DPTImageProcessor``, which ``-hf`` folders name in their preprocessor config, scales as little as
  possible instead, so upscaled pictures get one side below 518; both agree for pictures at least 518 on their
  shorter side.)
* ZoeDepth (``ZoeDepthImageProcessor`` and the original ``ZoeDepth.infer``): reflect-pad by
  ``int(√(h/2)·3)`` rows and ``int(√(w/2)·3)`` columns against border artefacts, resize keeping the aspect
  ratio towards 384 × 512 with multiples of 32, bilinear; mean = std = 0.5; the prediction is averaged with that
  of the mirrored picture (``with_flip_aug``), resized back to the padded size and cropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from mvcustom_core.checks import check_shape

from .loading import DepthModel, InputSpec
from .maps import DepthMap

__all__ = ["estimate_depth", "estimate_bytes", "network_input_size", "resize_keep_aspect"]


def resize_keep_aspect(height: int, width: int, target: tuple[int, int], multiple: int,
                       method: str = "minimal") -> tuple[int, int]:
    """Network input size of the MiDaS-family ``Resize`` transform used by Depth Anything and ZoeDepth.

    Keeping the aspect ratio, the scale is the one of the two (``target / size`` per side) that is closest to 1
    (``"minimal"``, ZoeDepth and transformers' processors) or the larger one, so both sides reach the target
    (``"lower_bound"``, Depth Anything V2's ``infer_image``); ``"none"`` scales each side to its target (aspect ratio
    not kept). Each side is then rounded to the nearest multiple, rounding up where that would fall below the
    target (lower bound).

    Example:
        >>> resize_keep_aspect(512, 768, (518, 518), 14, "lower_bound")
        (518, 784)
        >>> resize_keep_aspect(480, 640, (384, 512), 32)
        (384, 512)
    """
    scale_h, scale_w = target[0] / height, target[1] / width
    if method == "lower_bound":
        scale_h = scale_w = max(scale_h, scale_w)
    elif method == "minimal":
        scale_h = scale_w = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
    elif method != "none":
        raise ValueError(f"resize method must be 'minimal', 'lower_bound' or 'none', got {method!r}")

    def side(x: float, least: int) -> int:
        y = round(x / multiple) * multiple
        return max(multiple, math.ceil(x / multiple) * multiple if y < least else y)

    least = target if method == "lower_bound" else (0, 0)
    return side(scale_h * height, least[0]), side(scale_w * width, least[1])


def _normalize(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)[:, None, None]
    s = torch.tensor(std, dtype=x.dtype, device=x.device)[:, None, None]
    return (x - m) / s


def _forward(model: DepthModel, pixels: Tensor) -> Tensor:
    param = next(model.module.parameters())
    out = model.module(pixel_values=pixels.to(param.device, param.dtype)).predicted_depth  # [1, h, w]
    return out.float()[:, None]


def _estimate_one(model: DepthModel, image: Tensor) -> Tensor:
    """``[3, H, W]`` in [0, 1] -> ``[H, W]`` raw model output at the picture's size."""
    spec: InputSpec = model.input
    h, w = image.shape[-2:]
    pad_h, pad_w = (int(math.sqrt(h / 2) * 3), int(math.sqrt(w / 2) * 3)) if spec.pad else (0, 0)
    x = F.pad(image[None], (pad_w, pad_w, pad_h, pad_h), mode="reflect") if spec.pad else image[None]
    if spec.resize:
        size = resize_keep_aspect(h + 2 * pad_h, w + 2 * pad_w, spec.size, spec.multiple, spec.keep_aspect)
        x = F.interpolate(x, size=size, mode=spec.interpolation, align_corners=False,
                          antialias=spec.interpolation == "bicubic").clamp(0, 1)
    x = _normalize(x, spec.mean, spec.std)
    out = _forward(model, x)
    if spec.flip:
        out = (out + _forward(model, x.flip(-1)).flip(-1)) / 2
    out = F.interpolate(out, size=(h + 2 * pad_h, w + 2 * pad_w), mode="bicubic", align_corners=False)
    return out[0, 0, pad_h:pad_h + h, pad_w:pad_w + w]


def network_input_size(model: DepthModel, image_size: tuple[int, int]) -> tuple[int, int]:
    """``(h, w)`` the network sees for a picture of ``image_size`` (ZoeDepth's reflect padding included)."""
    spec: InputSpec = model.input
    h, w = image_size
    if spec.pad:
        h, w = h + 2 * int(math.sqrt(h / 2) * 3), w + 2 * int(math.sqrt(w / 2) * 3)
    return resize_keep_aspect(h, w, spec.size, spec.multiple, spec.keep_aspect) if spec.resize else (h, w)


def estimate_bytes(model: DepthModel, image_size: tuple[int, int]) -> int:
    """Estimated activation peak of :func:`estimate_depth` on one picture of ``image_size``.

    Counted in floats per pixel of the network input (:func:`network_input_size`), from the module's config:

    * the DPT neck and head, ``2·f + 2·k`` (f = fusion width, k = the head's hidden width: Depth Anything's
      ``head_hidden_size``, ZoeDepth's ``num_relative_features``): the head upsamples ``f/2`` channels to the
      input's full resolution and convolves them to k, after fusion stages of width f at half resolution;
    * the backbone's hidden states, which the neck reads after the last layer: ``(L + 1)·C / p²`` (C width, L
      layers, p patch size);
    * ZoeDepth only: its metric head's bin embedding and bins at half resolution, ``(e + n) / 2`` (e =
      ``bin_embedding_dim``, n the most bins of a head), and the padded, resized, normalized and mirrored copies
      of the input, 30, and op scratch that grows with the CPU's threads (~8 at two threads), 15 more.

    Measured with random weights on the CPU (``measure_peak``): Depth Anything V2 Small / Base at 518 × 518 and
    518 × 784 and the tiny test model, 1.36-1.39x below this; ZoeDepth with the released head (f = 256, e = 128,
    n = 64) on a small backbone, 1.15-1.21x below; the tiny test model 1.29x below on one thread and 1.17x on two
    (tests hold the tiny models to measured ≤ estimate ≤ 1.5 × measured).
    """
    h, w = network_input_size(model, image_size)
    config = model.module.config
    backbone = config.backbone_config
    hidden = (backbone.num_hidden_layers + 1) * backbone.hidden_size / backbone.patch_size**2
    if model.family == "zoedepth":
        bins = max(c["n_bins"] for c in config.bin_configurations)
        per_pixel = (2 * config.fusion_hidden_size + 2 * config.num_relative_features + hidden
                     + (config.bin_embedding_dim + bins) / 2 + 45)
    else:
        per_pixel = 2 * config.fusion_hidden_size + 2 * config.head_hidden_size + hidden
    element = next(model.module.parameters()).element_size()
    return int(math.ceil(per_pixel * h * w)) * element


def estimate_depth(model: DepthModel, images: Tensor, *, progress: Callable[[int, int], None] | None = None
                   ) -> DepthMap:
    """Depth of each picture ``[B, 3, H, W]`` in [0, 1] -> :class:`DepthMap` ``[B, H, W]`` of ``model.kind``.

    Pixels are valid where the output is finite and positive. Metric depth: bicubic resizing may undershoot.
    Disparity: the relative head ends in a ReLU, whose floor 0 is where it puts e.g. the sky, at or beyond
    infinity; like a clipped end of a depth IMAGE, such a value only bounds the depth (negatives from bicubic
    undershoot are clamped to 0 first).

    Args:
        progress: ``progress(done, total)`` after each picture; it may raise to interrupt.
    """
    b = check_shape(images, "B 3 H W", "images")["B"]
    out = []
    with torch.no_grad():
        for i in range(b):
            out.append(_estimate_one(model, images[i].float().to(next(model.module.parameters()).device)).cpu())
            if progress is not None:
                progress(i + 1, b)
    values = torch.stack(out)
    if model.kind == "disparity":
        values = values.clamp_min(0)  # the head's ReLU output; negatives are bicubic undershoot
    valid = torch.isfinite(values) & (values > 0)
    values = torch.where(valid, values, torch.zeros_like(values))
    return DepthMap(values, valid, model.kind, model.name)
