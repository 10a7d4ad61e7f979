"""The extract stage's model: a timm model built from the config's `extract:` section, its eval
preprocessing, and its feature width.

Features are what the seed CSVs hold: `forward_head(forward_features(x), pre_logits=True)`, the
pooled features before the classifier, after the model's own eval transform (timm's data config:
input size, interpolation, crop, mean/std; `img_size` overrides the size). Weights: a local
checkpoint through timm's pretrained loader (it applies the model's own key conversion and drops a
classifier of another class count), timm's pretrained weights from the hub, or random weights
(`pretrained: false`, seeded so every part job builds the same model: what the tests use).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from scripts.lib.featio.errors import FeatgapError
from scripts.lib.images.tv_compat import import_timm


@dataclass(frozen=True)
class ModelSpec:
    """The `extract` config's model: timm name, weights, input size."""

    name: str
    checkpoint: str | None = None  # a local weights file (timm / safetensors state dict)
    pretrained: bool = True  # timm's pretrained weights from the hub (when no checkpoint); false: random
    img_size: int | None = None  # overrides the model's input size (and the model's, where it has one)

    @classmethod
    def of(cls, options: dict) -> ModelSpec:
        """From the config's `extract:` section."""
        if not options.get("model"):
            raise FeatgapError("extract.model: no timm model name configured (needed for image splits)")
        return cls(str(options["model"]), options.get("checkpoint"), bool(options.get("pretrained", True)),
                   options.get("img_size"))


def _create(spec: ModelSpec, **kwargs):
    timm = import_timm()
    if spec.img_size is not None:
        try:  # ViT-like models size their position embeddings from img_size
            return timm.create_model(spec.name, img_size=spec.img_size, **kwargs)
        except TypeError as err:
            if "img_size" not in str(err):
                raise
            # CNNs take any input size: the override applies to the preprocessing only
    return timm.create_model(spec.name, **kwargs)


def check_name(spec: ModelSpec) -> None:
    if not import_timm().is_model(spec.name.partition(".")[0]):  # `arch.pretrained_tag` names the arch first
        raise FeatgapError(f"extract.model: {spec.name!r} is not a timm model name")


def build_model(spec: ModelSpec, seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """The model in eval mode with its weights, and its resolved eval data config."""
    timm = import_timm()
    check_name(spec)
    kwargs: dict = {}
    if spec.checkpoint is not None:
        path = Path(spec.checkpoint)
        if not path.is_file():
            raise FeatgapError(f"extract.checkpoint: {path} not found")
        kwargs = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path)}}
    elif spec.pretrained:
        kwargs = {"pretrained": True}
    torch.manual_seed(seed)
    try:
        model = _create(spec, **kwargs)
    except (OSError, RuntimeError) as err:  # hub unreachable (LocalEntryNotFoundError is an OSError), bad file
        what = f"checkpoint {spec.checkpoint}" if spec.checkpoint else "timm's pretrained weights from the hub"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        hint = "" if spec.checkpoint else "; set extract.checkpoint to a local weights file"
        raise FeatgapError(f"extract.model {spec.name}: cannot load {what} ({first[:200]}){hint}") from None
    model.eval()
    overrides = {"input_size": (3, spec.img_size, spec.img_size)} if spec.img_size else {}
    config = timm.data.resolve_model_data_config(model, args=overrides)
    return model, config


def feature_width(model: torch.nn.Module) -> int:
    """Width of forward_head(pre_logits=True): head_hidden_size where a model has a hidden head
    layer (mobilenetv3: 1280, against num_features 960), else num_features."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def check_dim(spec: ModelSpec, dim: int) -> int:
    """`dim` must equal the model's feature width. Built on the meta device (no weights, no
    memory: EVA-02-L in 0.4 s), so the workflow checks it when it parses the config, before any job."""
    check_name(spec)
    with torch.device("meta"):
        width = feature_width(_create(spec))
    if width != dim:
        raise FeatgapError(f"config key dim: {dim}, but extract.model {spec.name} gives {width} features "
                           "(forward_head pre_logits); set dim: " + str(width))
    return width


def make_transform(data_config: dict):
    return import_timm().data.create_transform(**data_config, is_training=False)


def pre_logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(images), pre_logits=True)
