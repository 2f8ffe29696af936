"""Heatmaps (petlab/models/cam.py, petlab/inference/heatmap.py): they point at the object, they are the logit
split over the map exactly, Grad-CAM agrees where both apply, every architecture gets one, a randomised head
changes them, and they land on the photo's own frame."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

from petlab.data.transforms import Preprocessing
from petlab.inference.heatmap import PhotoHeatmap, crop_box
from petlab.models import ARCHS, build_model
from petlab.models.cam import ClassMaps, FeatureMapHook, head_linear, heatmaps

PHOTO = (320, 240)  # wider than tall: the model's centre crop leaves a border on each side
OBJECT = 64


def sample_object() -> Image.Image:
    """A real textured object: the middle of scikit-learn's flower photo, OBJECT px square."""
    from petlab.data.non_pets import sample_photo_files

    flower = next(p for p in sample_photo_files() if p.stem == "flower")
    image = Image.open(flower).convert("RGB")
    side = min(image.size) // 2
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((OBJECT, OBJECT))


def on_plain_background(where: tuple[int, int] | None) -> Image.Image:
    photo = Image.new("RGB", PHOTO, (128, 128, 128))
    if where is not None:
        photo.paste(sample_object(), where)
    return photo


@pytest.fixture(scope="module")
def object_detector():
    """ImageNet's Lite0 with a 2-class head that scores "the object is there": its weight is the object's pooled
    features less the plain background's (no training; a map's peak can only come from where the object is)."""
    model, _ = build_model("efficientnet_lite0", 2, pretrained=True)
    model.eval()
    pre = Preprocessing.for_model(ARCHS["efficientnet_lite0"], None, 1.14)
    hook = FeatureMapHook(model, "efficientnet_lite0")

    def pooled(image):
        with torch.no_grad():
            model(torch.from_numpy(pre.batch_array([image])))
        return hook.map.mean((2, 3))[0]

    hook_handle = hook.handle
    direction = pooled(on_plain_background((128, 88))) - pooled(on_plain_background(None))
    hook_handle.remove()
    with torch.no_grad():
        linear = head_linear(model, "efficientnet_lite0")
        linear.weight.copy_(torch.stack([direction, -direction]))
        linear.bias.zero_()
    return model, pre


@pytest.mark.parametrize("where", [(200, 70), (60, 150), (140, 30)])
def test_a_heatmaps_peak_lies_on_a_synthetic_object_pasted_on_a_plain_background(object_detector, where):
    model, pre = object_detector
    photo = on_plain_background(where)
    logits, heat = heatmaps(model, "efficientnet_lite0", torch.from_numpy(pre.batch_array([photo])))
    assert logits.argmax(1).item() == 0  # "the object is there"
    frame = PhotoHeatmap.from_cam("object", heat[0].numpy(), photo, pre)
    x, y = frame.peak()
    x, y = x * PHOTO[0], y * PHOTO[1]
    cell = 224 / 7 * PHOTO[1] / 255  # one map cell in the photo's pixels: the map's own resolution
    assert where[0] - cell / 2 <= x <= where[0] + OBJECT + cell / 2, (x, y, where)
    assert where[1] - cell / 2 <= y <= where[1] + OBJECT + cell / 2, (x, y, where)


def test_the_map_is_zero_where_the_model_never_looked_and_keeps_the_photos_frame(object_detector):
    model, pre = object_detector
    photo = on_plain_background((200, 70))
    _, heat = heatmaps(model, "efficientnet_lite0", torch.from_numpy(pre.batch_array([photo])))
    placed = PhotoHeatmap.from_cam("object", heat[0].numpy(), photo, pre)
    left, top, right, bottom = crop_box(*PHOTO, pre)
    assert placed.frame.shape == (PHOTO[1], PHOTO[0]) and 0.9 < placed.frame.max() <= 1  # scaled to its peak
    assert left > 40 and not placed.frame[:, :int(left)].any() and not placed.frame[:, int(right) + 1:].any()
    grid = placed.grid()
    assert grid.shape == (24, 32) and 0 <= grid.min() and grid.max() <= 1  # the photo's 4:3, long side 32 cells
    overlay = placed.overlay(photo)
    assert overlay.size == PHOTO and overlay.mode == "RGB"
    answer = placed.to_json(photo)
    assert (answer["rows"], answer["cols"]) == (24, 32) and len(answer["grid"]) == 24
    # the crop box is where the model's input comes from: its pixels equal the eval crop's, resized back
    crop = np.asarray(photo.resize((340, 255), Image.Resampling.BILINEAR))[16:240, 58:282]
    assert np.array_equal(crop, pre.eval_array(photo))
    assert (left, top) == pytest.approx((58 * 320 / 340, 16 * 240 / 255))


def test_the_exact_map_is_the_logit_split_over_positions_and_grad_cam_is_its_positive_part():
    """For a linear head on pooled features, Grad-CAM's channel weights are W_k / (h w): Captum's own Grad-CAM
    is the exact map, and with its ReLU the map's positive part. For the seed CNN (flattened
    3 x 3 map) the split is exact too."""
    from captum.attr import LayerGradCam

    torch.manual_seed(0)
    model, _ = build_model("efficientnet_lite0", 5, pretrained=True)  # ImageNet's features, a new head
    x = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        logits, maps = ClassMaps(model.eval(), model, "efficientnet_lite0")(x)
    assert maps.shape == (3, 5, 3, 3)
    torch.testing.assert_close(maps.sum((2, 3)) + head_linear(model, "efficientnet_lite0").bias, logits)
    target = logits.argmin(1)  # the least likely class: evidence against it too
    grad_cam = LayerGradCam(model, model._avg_pooling)
    exact = maps[torch.arange(3), target]
    raw = grad_cam.attribute(x, target=target, attribute_to_layer_input=True)[:, 0].detach()
    torch.testing.assert_close(raw, exact, rtol=1e-4, atol=1e-5)
    assert (exact < 0).any()  # so the ReLU below has something to cut
    relu = grad_cam.attribute(x, target=target, attribute_to_layer_input=True, relu_attributions=True)[:, 0].detach()
    torch.testing.assert_close(relu, exact.clamp(min=0), rtol=1e-4, atol=1e-5)

    seed, _ = build_model("custom_cnn", 2)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        logits, maps = ClassMaps(seed.eval(), seed, "custom_cnn")(x)
    assert maps.shape == (2, 2, 3, 3)
    torch.testing.assert_close(maps.sum((2, 3)) + head_linear(seed, "custom_cnn").bias, logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_architecture_gets_a_heatmap_for_the_class_asked(arch):
    torch.manual_seed(0)
    model, _ = build_model(arch, 3, dropout=0.2)
    size = 224 if arch == "custom_cnn" else 96
    x = torch.randn(2, 3, size, size)
    logits, heat = heatmaps(model, arch, x, target=torch.tensor([2, 0]))
    assert logits.shape == (2, 3) and heat.dim() == 3 and heat.shape[0] == 2 and torch.isfinite(heat).all()
    assert heat.abs().sum() > 0


def test_the_maps_change_when_the_head_is_randomised(object_detector):
    """Adebayo et al.'s sanity check: a map that survives randomising the weights explains the image, not the
    model. Re-drawn at the head's own initialisation, the maps must no longer rank the positions alike."""
    model, pre = object_detector
    import copy

    randomised = copy.deepcopy(model)
    torch.manual_seed(1)
    head_linear(randomised, "efficientnet_lite0").reset_parameters()
    photos = [on_plain_background(where) for where in [(200, 70), (60, 150), (140, 30), (230, 160)]]
    x = torch.from_numpy(pre.batch_array(photos))
    with torch.no_grad():
        _, trained = ClassMaps(model, model, "efficientnet_lite0")(x)
        _, random = ClassMaps(randomised, randomised, "efficientnet_lite0")(x)
    rhos = [spearmanr(trained[i, 0].flatten(), random[i, 0].flatten()).statistic for i in range(len(photos))]
    assert np.median(np.abs(rhos)) < 0.5, rhos
    assert not torch.allclose(trained, random)


@pytest.mark.slow
def test_explain_onnx_declares_the_shapes_it_produces(promoted_registry):
    """explain.onnx once declared class_maps [batch, C, batch, Divclass_maps_dim_3] while producing (N, C, 7, 7):
    every output of every ONNX file of a version now says `batch` and then its real sizes, and ONNX's own
    shape inference (strict) agrees."""
    import onnx

    version = promoted_registry / "cats_vs_dogs" / "v1"
    classes = len(json.loads((version / "card.json").read_text())["classes"])
    for path in sorted(version.glob("*.onnx")):
        model = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True)
        for output in model.graph.output:
            dims = [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim]
            assert dims[0] == "batch" and all(isinstance(d, int) and d > 0 for d in dims[1:]), (path.name, dims)
    maps = next(o for o in onnx.load(str(version / "explain.onnx")).graph.output if o.name == "class_maps")
    assert [d.dim_param or d.dim_value for d in maps.type.tensor_type.shape.dim][:2] == ["batch", classes]
