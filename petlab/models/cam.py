"""Where a model looked: class-activation maps for every architecture petlab trains.

Every petlab head but two is linear on the last feature map F [C, h, w], pooled (global average) or flattened:
logit_k = sum over positions of cam_k(i, j), plus the bias, with
- pooled:    cam_k(i, j) = W_k . F(:, i, j) / (h w)      (Zhou et al., 2016, "Learning Deep Features for
                                                          Discriminative Localization")
- flattened: cam_k(i, j) = sum_c W_k(c, i, j) F(c, i, j) (the seed's custom CNN: 512 x 3 x 3 into its Linear)
So the map is each position's exact share of the logit, for every class at once, from one forward pass and
no gradient: `ClassMaps` adds it to a model's outputs, and the promotion exports that as explain.onnx, which
serves it on ONNX Runtime (no torch on the Space).

MobileNetV3 and ConvNeXt put a hidden layer or a LayerNorm between the pooled features and the logits, so no
exact map exists; for them `heatmaps` takes Grad-CAM (Selvaraju et al., 2017) from Captum (BSD-3, kept by the
PyTorch team; it installs nothing beyond torch, numpy and matplotlib, where grad-cam pulls OpenCV and ttach; its
Grad-CAM reads a layer's input as well as its output, which the Lite models' pooling layer needs; torchcam,
Apache-2.0, also installs cleanly and was not timed). For a linear head Grad-CAM's channel weights are
W_k / (h w) exactly, so it is the map above, and with its ReLU the map's positive part (tests/test_heatmaps.py
checks both against Captum's own), at the price of a backward pass: benchmarks/heatmaps.py measured it 8x slower
than the exact map on Lite2.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from petlab.models.zoo import ARCHS


def head_linear(model: nn.Module, arch: str) -> nn.Linear:
    """The trained head's Linear (the head is a Linear, or Sequential(Dropout, Linear))."""
    head = model.get_submodule(ARCHS[arch].head)
    return head if isinstance(head, nn.Linear) else [m for m in head.modules() if isinstance(m, nn.Linear)][-1]


class FeatureMapHook:
    """Keeps the last feature map a model computes: the input of its pooling (or flattening) layer, or the output
    of the layer named, as the architecture's spec says."""

    def __init__(self, model: nn.Module, arch: str):
        spec = ARCHS[arch]
        layer = model.get_submodule(spec.cam_layer)
        self.map: torch.Tensor | None = None
        if spec.cam_layer_input:
            self.handle = layer.register_forward_pre_hook(self._keep_input)
        else:
            self.handle = layer.register_forward_hook(self._keep_output)

    def _keep_input(self, module, args):
        self.map = args[0]

    def _keep_output(self, module, args, output):
        self.map = output


def project(feature_map: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """[N, C, h, w] and the head's Linear -> [N, classes, h, w]: each position's share of each logit (less the
    bias), for a head that pools (in_features C) or flattens (in_features C h w)."""
    n, c, h, w = feature_map.shape
    weight = linear.weight.float()
    if linear.in_features == c:
        return torch.einsum("kc,nchw->nkhw", weight, feature_map.float()) / (h * w)
    if linear.in_features == c * h * w:
        return torch.einsum("kchw,nchw->nkhw", weight.view(-1, c, h, w), feature_map.float())
    raise ValueError(f"the head takes {linear.in_features} features, neither the feature map's {c} channels nor "
                     f"its {c * h * w} values")


class ClassMaps(nn.Module):
    """`core`'s outputs, and the class-activation maps of `model`'s head as one more output: x -> (*core's
    outputs, maps [N, classes, h, w]). core runs model's layers: it is the model, or a view built around it whose
    copy of the layers is `runs` (models/pet_view.OwnBackboneView)."""

    def __init__(self, core: nn.Module, model: nn.Module, arch: str, runs: nn.Module | None = None):
        super().__init__()
        if not ARCHS[arch].exact_cam:
            raise ValueError(f"{arch}'s head is not linear on its feature map: use heatmaps() (Grad-CAM)")
        self.core, self.linear = core.eval(), head_linear(model, arch)
        self.hook = FeatureMapHook(runs if runs is not None else model, arch)

    def forward(self, x: torch.Tensor):
        out = self.core(x)
        maps = project(self.hook.map, self.linear)
        return (*out, maps) if isinstance(out, tuple) else (out, maps)


def heatmaps(model: nn.Module, arch: str, x: torch.Tensor, target: torch.Tensor | None = None) \
        -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [N, classes], heatmap [N, h, w]) for each photo's `target` class (default: its top-1): the exact
    class-activation map where the head is linear on the feature map, else Captum's Grad-CAM."""
    model = model.eval()
    if ARCHS[arch].exact_cam:
        with torch.no_grad():
            logits, maps = ClassMaps(model, model, arch)(x)
        target = logits.argmax(1) if target is None else target
        return logits, maps[torch.arange(len(x)), target]
    from captum.attr import LayerGradCam

    with torch.no_grad():
        logits = model(x)
    target = logits.argmax(1) if target is None else target
    layer = model.get_submodule(ARCHS[arch].cam_layer)
    grad_cam = LayerGradCam(model, layer)
    maps = grad_cam.attribute(x, target=target, relu_attributions=False,
                              attribute_to_layer_input=ARCHS[arch].cam_layer_input)
    return logits, maps[:, 0].detach()


@torch.no_grad()
def export_class_maps(model: torch.nn.Module, arch: str, view: torch.nn.Module | None, trace_batch: torch.Tensor,
                      check_batches: list[torch.Tensor], out_dir: Path) -> dict | None:
    """Write explain.onnx: what the server runs for explain=true, the served outputs (the model's logits, or
    `view`'s (logits, pet probability) when the version has its own pet view) and the class-activation maps
    [N, classes, h, w] last (models/cam.py), one forward pass. Verified after the round trip: the served
    outputs must be the eager model's and the maps eager ClassMaps'. None for an architecture whose head is
    not linear on its feature map (no exact map; Grad-CAM needs PyTorch)."""
    from petlab.export.onnx import export_and_check
    from petlab.inference.model import EXPLAIN_ONNX

    if not ARCHS[arch].exact_cam:
        return None
    model = model.float().eval()
    core = view.float().eval() if view is not None else model
    explained = ClassMaps(core, model, arch, runs=getattr(view, "model", None))
    outputs = ("logits", "pet_probability", "class_maps") if view is not None else ("logits", "class_maps")
    report = export_and_check(explained, trace_batch, check_batches, out_dir / EXPLAIN_ONNX, outputs)
    return {**report, "outputs": list(outputs),
            "class_maps": "each position's exact share of each class's logit (less the bias), on the last feature "
                          "map of the eval crop: class-activation maps, petlab/models/cam.py"}


def overlaid_crops(model: nn.Module, arch: str, crops: list, classes: list[int], pre) -> list:
    """Each eval crop (uint8 HWC, what the model saw) with the map of `classes[i]` over it: the run's and the
    comparison report's highest-loss photos show where the model looked for the class it answered."""
    import numpy as np
    from PIL import Image

    from petlab.inference.heatmap import PhotoHeatmap

    if not crops:
        return []
    x = torch.from_numpy(pre.normalize_array(np.stack(crops)))
    _, maps = heatmaps(model, arch, x, torch.tensor(classes))
    whole = dataclasses.replace(pre, resize_size=pre.image_size)  # the crop is the whole of what it saw
    return [np.asarray(PhotoHeatmap.from_cam("", m.numpy(), Image.fromarray(c), whole).overlay(
        Image.fromarray(c), side=max(c.shape))) for m, c in zip(maps, crops)]
