"""The model zoo: the seed's custom CNN to the digit, heads replaced, weights loaded or refused."""

import time

import pytest
import torch
import torchinfo

from petlab.engine.experiment import model_summary
from petlab.models import ARCHS, build_model, head_parameters
from petlab.models.zoo import WeightsError

SHARED_WEIGHTS = "mobilenet_v2_from_qnnpack_float-52fff228.pth"


def test_custom_cnn_reproduces_every_published_figure():
    model, _ = build_model("custom_cnn", 2)
    text = str(model_summary(model, 224))
    for figure in ("Total params: 2,668,418", "Trainable params: 2,668,418", "Non-trainable params: 0",
                   "Total mult-adds (Units.GIGABYTES): 13.62", "Input size (MB): 0.60",
                   "Forward/backward pass size (MB): 188.26", "Params size (MB): 10.67",
                   "Estimated Total Size (MB): 199.54", "(recursive)"):
        assert figure in text, figure
    layers = {name: sum(p.numel() for p in module.parameters()) for name, module in model.named_modules()}
    assert [layers[f"block{b}.{i}"] for b in (1, 2, 3) for i in (0, 2)] == [1792, 128, 295424, 1024, 2359808, 1024]
    assert layers["head.1"] == 9218


def test_custom_cnn_breeds_head_and_size_limits():
    model, _ = build_model("custom_cnn", 5)
    assert model(torch.zeros(1, 3, 192, 192)).shape == (1, 5)
    assert model(torch.zeros(1, 3, 255, 255)).shape == (1, 5)
    with pytest.raises(RuntimeError):
        model(torch.zeros(1, 3, 256, 256))  # 4 x 4 after six poolings: not 4608 features


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "custom_cnn"])
def test_every_backbone_gets_a_new_head(arch):
    model, report = build_model(arch, 3)
    assert report is None
    model.eval()
    with torch.inference_mode():
        assert model(torch.zeros(2, 3, 96, 96)).shape == (2, 3)
    head = head_parameters(model, arch)
    assert sum(p.numel() for p in model.parameters() if id(p) in head) < 0.1 * sum(
        p.numel() for p in model.parameters())


def test_shared_imagenet_weights_load_into_mobilenet_v2(shared):
    model, report = build_model("mobilenet_v2", 2, weights=str(shared.parent / "weights" / SHARED_WEIGHTS))
    assert report["missing"] == [] and report["unexpected"] == [] and report["loaded"] == 314
    ref = torch.load(shared.parent / "weights" / SHARED_WEIGHTS, weights_only=True)
    assert torch.equal(model.features[0][0].weight, ref["features.0.0.weight"])


def test_weights_for_another_architecture_are_refused(shared):
    with pytest.raises(WeightsError, match="none of its .* tensors match"):
        build_model("resnet18", 2, weights=str(shared.parent / "weights" / SHARED_WEIGHTS))


def test_missing_or_unreadable_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="weights file not found"):
        build_model("mobilenet_v2", 2, weights=str(tmp_path / "nope.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_text("not a state dict")
    with pytest.raises(WeightsError, match="not a readable PyTorch state dict"):
        build_model("mobilenet_v2", 2, weights=str(junk))


def test_efficientnet_lite0_is_pretrained_without_a_download():
    model, report = build_model("efficientnet_lite0", 2, pretrained=True)
    assert report["missing"] == [] and report["unexpected"] == [] and report["loaded"] > 200
    assert ARCHS["efficientnet_lite0"].mean == (0.5, 0.5, 0.5)


def test_pretrained_offline_fails_fast_naming_the_way_out(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: it has to download
    start = time.monotonic()
    with pytest.raises(WeightsError) as info:
        build_model("resnet18", 2, pretrained=True)
    assert time.monotonic() - start < 60
    assert "--weights" in str(info.value) and "TORCH_HOME" in str(info.value)


def test_custom_cnn_has_no_pretrained_weights():
    with pytest.raises(WeightsError, match="from scratch"):
        build_model("custom_cnn", 2, pretrained=True)


def test_torchinfo_summary_for_a_backbone_runs():
    model, _ = build_model("mobilenet_v3_small", 2)
    assert torchinfo.summary(model, input_size=(1, 3, 224, 224), verbose=0).total_params > 1e6


@pytest.mark.parametrize("arch", ["efficientnet_lite0", "resnet18", "custom_cnn"])
def test_the_summary_counts_every_mult_add_that_flop_counter_counts(arch):
    """torchinfo left out EfficientNet-Lite's Conv2dStaticSamePadding (a conv with a child): Lite0 read
    0.04 M mult-adds, about 0.4 G really. The summary's totals against torch.utils.flop_counter's."""
    from torch.utils.flop_counter import FlopCounterMode

    model, _ = build_model(arch, 2, pretrained=False)
    summary = model_summary(model, 224)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, 224, 224))
    assert summary.total_mult_adds == pytest.approx(counter.get_total_flops() / 2, rel=0.05)  # a MAC is 2 FLOPs
    params_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
    assert float(str(summary).split("Params size (MB): ")[1].split()[0]) == pytest.approx(params_mb, rel=0.01)


def test_the_summary_counts_a_frozen_backbone_as_not_trainable():
    model, _ = build_model("efficientnet_lite0", 2, pretrained=False)
    head = head_parameters(model, "efficientnet_lite0")
    frozen = frozenset(id(p) for p in model.parameters() if id(p) not in head)
    summary = model_summary(model, 224, frozen)
    assert summary.trainable_params == 1280 * 2 + 2  # the linear head's weight and bias
    assert all(p.requires_grad for p in model.parameters())  # the model itself is left as it was


def test_fast_resnet_is_the_small_cpu_net_it_claims_to_be():
    model, _ = build_model("fast_resnet", 2)
    summary = model_summary(model, 128)
    assert 2.5e6 < summary.total_params < 3.0e6
    assert summary.total_mult_adds < 0.5e9  # at 128 px: a quarter of ResNet18's at 224 px
    model.eval()
    with torch.inference_mode():
        for size in (32, 128, 160, 224):  # global pooling: any size from 32 px
            assert model(torch.zeros(2, 3, size, size)).shape == (2, 2)
    assert ARCHS["fast_resnet"].image_size == 128
    with pytest.raises(WeightsError, match="no pretrained weights"):
        build_model("fast_resnet", 2, pretrained=True)
