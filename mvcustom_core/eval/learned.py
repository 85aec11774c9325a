"""Learned similarity metrics (CLIP, DINO/DINOv2, DreamSim) from weights the user keeps locally.

Nothing is ever downloaded: every model loads from a local folder with ``local_files_only=True``; a
missing package, folder or file raises :class:`MetricUnavailable` saying what to put where.

Metrics (embeddings are L2-normalised, distance = 1 − cosine, as DreamSim defines its distance):

- multi-view consistency: mean distance over all pairs of generated views (↓); the paper uses
  DreamSim, Table A1 adds CLIP image similarity (reported here as the mean cosine, ↑).
- identity: mean distance from every generated view to every reference photo (↓).
- text alignment: CLIP-S = 2.5 · max(cos(image, text), 0) averaged over views (↑), Hessel et al.,
  "CLIPScore: A Reference-free Evaluation Metric for Image Captioning", EMNLP 2021, eq. (1). The
  paper's values (0.68–0.81) match this scale, not a raw cosine (≈ 0.3); the paper does not say.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F_
from torch import Tensor

from mvcustom_core.checks import check_finite, check_shape
from mvcustom_core.eval.errors import MetricUnavailable

__all__ = ["ImageEmbedder", "ClipEmbedder", "DinoEmbedder", "DreamSimEmbedder", "load_clip", "load_dino",
           "load_dreamsim", "preprocess_images", "mean_pairwise_distance", "mean_pairwise_similarity",
           "mean_cross_distance", "clip_score", "CLIP_SCORE_WEIGHT", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD",
           "IMAGENET_MEAN", "IMAGENET_STD"]

CLIP_SCORE_WEIGHT = 2.5
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _require_folder(path: str | Path | None, what: str, expected: str) -> Path:
    if path is None or str(path) == "":
        raise MetricUnavailable(f"{what}: no local folder given; download {expected} once on a machine with "
                                f"network access and pass its folder (nothing is downloaded here)")
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise MetricUnavailable(f"{what}: {folder} has no config.json; put the {expected} folder there "
                                f"(config.json + model.safetensors, as saved by save_pretrained)")
    return folder


def _read_preprocessor(folder: Path, default_size: int, mean: Sequence[float], std: Sequence[float]
                       ) -> tuple[int, int, tuple[float, ...], tuple[float, ...]]:
    """(resize shortest edge, crop size, mean, std) from ``preprocessor_config.json`` when present."""
    resize, crop = default_size, default_size
    path = folder / "preprocessor_config.json"
    if path.is_file():
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise MetricUnavailable(f"{path}: not valid JSON ({exc})") from exc
        size = cfg.get("size", resize)
        resize = int(size.get("shortest_edge", size.get("height", resize)) if isinstance(size, dict) else size)
        c = cfg.get("crop_size", crop)
        crop = int(c.get("height", crop) if isinstance(c, dict) else c)
        mean = cfg.get("image_mean", mean)
        std = cfg.get("image_std", std)
    return resize, crop, tuple(float(x) for x in mean), tuple(float(x) for x in std)


def preprocess_images(images: Tensor, resize: int, crop: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``[N, 3, H, W]`` in [0, 1] -> ``[N, 3, crop, crop]`` normalised model input.

    Shortest edge resized to ``resize`` (bicubic, antialiased, as the CLIP/DINO image processors do),
    centre crop, then ``(x − mean) / std`` per channel.
    """
    check_shape(images, "N 3 H W", "images")
    check_finite(images, "images")
    h, w = images.shape[-2:]
    # The long edge is truncated, int(resize * long / short), as transformers' image processors do.
    size = (resize, int(resize * w / h)) if h <= w else (int(resize * h / w), resize)
    size = (max(crop, size[0]), max(crop, size[1]))
    x = F_.interpolate(images.float(), size=size, mode="bicubic", antialias=True, align_corners=False)
    top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
    x = x[..., top:top + crop, left:left + crop]
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)[:, None, None]
    s = torch.tensor(std, dtype=x.dtype, device=x.device)[:, None, None]
    return (x - m) / s


class ImageEmbedder:
    """An image model giving one L2-normalised embedding per image.

    Subclasses set ``name`` and implement :meth:`_embed` on preprocessed input.
    """

    name = "image"

    def __init__(self, model: torch.nn.Module, resize: int, crop: int, mean: Sequence[float], std: Sequence[float]):
        self.model = model.eval()
        self.resize, self.crop, self.mean, self.std = resize, crop, tuple(mean), tuple(std)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def embed_images(self, images: Tensor, batch_size: int = 16) -> Tensor:
        """``[N, 3, H, W]`` in [0, 1] -> ``[N, D]`` unit vectors (float32, on CPU)."""
        out = []
        for start in range(0, images.shape[0], batch_size):
            x = preprocess_images(images[start:start + batch_size], self.resize, self.crop, self.mean, self.std)
            out.append(F_.normalize(self._embed(x.to(self.device, self.dtype)).float(), dim=-1).cpu())
        return torch.cat(out)

    def _embed(self, pixel_values: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def _pooled(out: object) -> Tensor:
    # transformers 4 returns the projected tensor, 5 a model output whose pooler_output holds it.
    return out if isinstance(out, Tensor) else out.pooler_output


class ClipEmbedder(ImageEmbedder):
    """CLIP image (and, with a tokenizer, text) embeddings: ``transformers.CLIPModel``."""

    name = "clip"

    def __init__(self, model: torch.nn.Module, tokenizer: object | None, resize: int, crop: int,
                 mean: Sequence[float], std: Sequence[float], folder: Path | None = None):
        super().__init__(model, resize, crop, mean, std)
        self.tokenizer = tokenizer
        self.folder = folder

    def _embed(self, pixel_values: Tensor) -> Tensor:
        return _pooled(self.model.get_image_features(pixel_values=pixel_values))

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> Tensor:
        """``len(texts)`` prompts -> ``[T, D]`` unit vectors (float32, CPU)."""
        if self.tokenizer is None:
            raise MetricUnavailable(f"text alignment: the CLIP folder {self.folder} has no tokenizer files "
                                    f"(vocab.json + merges.txt or tokenizer.json); copy them from the same model")
        max_len = int(self.model.config.text_config.max_position_embeddings)
        tok = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        out = self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                           attention_mask=tok["attention_mask"].to(self.device))
        return F_.normalize(_pooled(out).float(), dim=-1).cpu()


class DinoEmbedder(ImageEmbedder):
    """DINO (ViT) or DINOv2 CLS-token embeddings: ``transformers.AutoModel`` (``ViTModel``/``Dinov2Model``)."""

    name = "dino"

    def _embed(self, pixel_values: Tensor) -> Tensor:
        return self.model(pixel_values=pixel_values).last_hidden_state[:, 0]


class DreamSimEmbedder:
    """DreamSim (Fu et al., NeurIPS 2023) through the ``dreamsim`` package, weights from a local cache folder."""

    name = "dreamsim"

    def __init__(self, model: torch.nn.Module, preprocess: object):
        self.model, self.preprocess = model, preprocess

    @torch.no_grad()
    def embed_images(self, images: Tensor, batch_size: int = 16) -> Tensor:
        device = next(self.model.parameters()).device
        x = F_.interpolate(images.float(), size=(224, 224), mode="bicubic", antialias=True, align_corners=False)
        out = [self.model.embed(x[i:i + batch_size].clamp(0, 1).to(device)).float().cpu()
               for i in range(0, x.shape[0], batch_size)]
        return F_.normalize(torch.cat(out), dim=-1)


def load_clip(path: str | Path | None, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
              ) -> ClipEmbedder:
    """CLIP from a local ``save_pretrained`` folder (e.g. a copy of ``openai/clip-vit-large-patch14``).

    Raises:
        MetricUnavailable: no folder, no ``config.json``, or weights that do not load.
    """
    folder = _require_folder(path, "CLIP metrics", "a transformers CLIP model (e.g. openai/clip-vit-large-patch14)")
    from transformers import AutoTokenizer, CLIPModel

    try:
        model = CLIPModel.from_pretrained(folder, local_files_only=True, dtype=dtype).to(device)
    except (OSError, ValueError) as exc:
        raise MetricUnavailable(f"CLIP metrics: cannot load a CLIPModel from {folder}: {exc}") from exc
    tokenizer = None
    # AutoTokenizer builds an empty tokenizer from config.json alone, so look for the vocabulary first.
    if (folder / "tokenizer.json").is_file() or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()):
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, TypeError) as exc:
            raise MetricUnavailable(f"CLIP metrics: the tokenizer files in {folder} do not load: {exc}") from exc
    resize, crop, mean, std = _read_preprocessor(folder, int(model.config.vision_config.image_size),
                                                 OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    return ClipEmbedder(model, tokenizer, resize, crop, mean, std, folder)


def load_dino(path: str | Path | None, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
              ) -> DinoEmbedder:
    """DINO/DINOv2 from a local folder (e.g. ``facebook/dinov2-small`` or ``facebook/dino-vits16``)."""
    folder = _require_folder(path, "DINO metrics", "a transformers DINOv2 or DINO ViT model (e.g. facebook/dinov2-base)")
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(folder, local_files_only=True, dtype=dtype).to(device)
    except (OSError, ValueError) as exc:
        raise MetricUnavailable(f"DINO metrics: cannot load a model from {folder}: {exc}") from exc
    image_size = int(getattr(model.config, "image_size", 224))
    # DINOv2's processor resizes to 256 then crops 224; DINO v1's to 224 (ImageNet mean/std for both).
    default_resize = 256 if model.config.model_type == "dinov2" else image_size
    resize, crop, mean, std = _read_preprocessor(folder, default_resize, IMAGENET_MEAN, IMAGENET_STD)
    if not (folder / "preprocessor_config.json").is_file():
        crop = 224 if model.config.model_type == "dinov2" else image_size
    return DinoEmbedder(model, resize, crop, mean, std)


def load_dreamsim(path: str | Path | None, *, device: str | torch.device = "cpu") -> DreamSimEmbedder:
    """DreamSim from the ``dreamsim`` package with its checkpoint already unpacked in ``path`` (its cache_dir)."""
    try:
        from dreamsim import dreamsim
    except ImportError as exc:
        raise MetricUnavailable("DreamSim metrics: the 'dreamsim' package is not installed (pip install dreamsim; "
                                "it needs torchvision), and its checkpoint must be unpacked into a local folder "
                                "passed as the DreamSim path") from exc
    if path is None or not Path(path).expanduser().is_dir() or not any(Path(path).expanduser().iterdir()):
        raise MetricUnavailable(f"DreamSim metrics: no checkpoint folder at {path!r}; run dreamsim(pretrained=True, "
                                f"cache_dir=<folder>) once with network access and pass that folder")
    model, preprocess = dreamsim(pretrained=True, device=str(device), cache_dir=str(Path(path).expanduser()))
    return DreamSimEmbedder(model, preprocess)


def _check_embeddings(e: Tensor, name: str) -> None:
    check_shape(e, "N D", name)
    check_finite(e, name)


def mean_pairwise_similarity(embeddings: Tensor) -> float:
    """Mean cosine over all unordered pairs of rows of ``embeddings: [N, D]`` (NaN if N < 2)."""
    _check_embeddings(embeddings, "embeddings")
    n = embeddings.shape[0]
    if n < 2:
        return float("nan")
    e = F_.normalize(embeddings, dim=-1)
    i, j = torch.triu_indices(n, n, 1)
    return float((e[i] * e[j]).sum(-1).mean())


def mean_pairwise_distance(embeddings: Tensor) -> float:
    """Mean ``1 − cos`` over all unordered pairs of views (multi-view consistency, ↓)."""
    return 1.0 - mean_pairwise_similarity(embeddings)


def mean_cross_distance(a: Tensor, b: Tensor) -> float:
    """Mean ``1 − cos`` over every row of ``a: [N, D]`` against every row of ``b: [M, D]`` (identity, ↓)."""
    _check_embeddings(a, "a")
    _check_embeddings(b, "b")
    return float(1.0 - (F_.normalize(a, dim=-1) @ F_.normalize(b, dim=-1).T).mean())


def clip_score(image_embeddings: Tensor, text_embedding: Tensor, *, weight: float = CLIP_SCORE_WEIGHT) -> float:
    """CLIP-S (Hessel et al. 2021): mean over images of ``weight · max(cos(image, text), 0)``.

    Args:
        image_embeddings: ``[N, D]``.
        text_embedding: ``[D]`` or ``[1, D]``.
    """
    _check_embeddings(image_embeddings, "image_embeddings")
    t = F_.normalize(text_embedding.reshape(1, -1), dim=-1)
    cos = F_.normalize(image_embeddings, dim=-1) @ t.T
    return float((weight * cos.clamp_min(0)).mean())
