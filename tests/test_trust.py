"""Predictions you can trust: calibrated probabilities, and promotion only when a model is really better."""

import json

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from petlab.calibration import apply_temperature, calibrate, expected_calibration_error, fit_temperature
from petlab.data.images import load_rgb
from petlab.inference.model import load_version
from petlab.models import build_model
from petlab.models.pet_view import OWN_BACKBONE_THRESHOLDS, own_backbone_head, pet_probability
from petlab.models.zoo import build_imagenet_classifier
from petlab.registry import Registry
from petlab.registry.promote import promote, rollback
from petlab.rundir import read_predictions
from tests.recipe import FAST_RESNET
from tests.registry import clone_run
from tests.runs import only_run_dir, script

TASK = "cats_vs_dogs"


@pytest.fixture(scope="module")
def weak_run(shared, tiny, tmp_path_factory):
    """A weak but honest cats-vs-dogs model in seconds: one epoch of fast_resnet, evaluated on every photo."""
    out = tmp_path_factory.mktemp("weak")
    weak = tiny.shrink({**FAST_RESNET, "train.epochs": 1}).on(shared / "cats_and_dogs_filtered")
    script("run.py", *weak.argv("--output-dir", out))
    return only_run_dir(out)


def overconfident(n=4000, classes=3, seed=0):
    """Predictions whose confidence is sharper than their accuracy: softmax(3 z) of a model with logits z
    whose own probabilities are calibrated (labels drawn from softmax(z))."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, classes))
    honest = torch.softmax(torch.tensor(logits), 1).numpy()
    targets = np.array([rng.choice(classes, p=p) for p in honest])
    return torch.softmax(torch.tensor(3 * logits), 1).numpy(), targets, honest


def test_temperature_scaling_undoes_overconfidence_and_keeps_every_prediction():
    sharp, targets, honest = overconfident()
    temperature = fit_temperature(sharp, targets)
    assert temperature == pytest.approx(3.0, rel=0.1)  # the factor the confidence was sharpened by
    fixed = apply_temperature(sharp, temperature)
    np.testing.assert_allclose(fixed.sum(1), 1, atol=1e-9)
    assert (fixed.argmax(1) == sharp.argmax(1)).all()  # accuracy cannot change
    assert expected_calibration_error(honest, targets) < 0.03  # calibrated by construction
    before, after = expected_calibration_error(sharp, targets), expected_calibration_error(fixed, targets)
    assert before > 0.1 and after < 0.03
    report = calibrate({"val": (sharp[:2000], targets[:2000]), "test": (sharp[2000:], targets[2000:])})
    assert report["test"]["ece_after"] < report["test"]["ece_before"]
    assert report["test"]["nll_after"] < report["test"]["nll_before"]
    # torch in, torch out (the server's path)
    assert torch.allclose(apply_temperature(torch.tensor(sharp[:5]), temperature), torch.tensor(fixed[:5]))


@pytest.mark.slow
def test_a_better_run_is_promoted_a_worse_one_refused_and_force_is_recorded(weak_run, real_runs, tmp_path):
    registry = tmp_path / "registry"
    reg = Registry(registry)
    promote(TASK, run=weak_run, registry=reg)
    assert reg.card(TASK, 1)["compared_with"] is None  # nothing to compare with yet
    # trained from scratch: no ImageNet backbone to ask, so the server uses the separate ImageNet view
    assert reg.card(TASK, 1)["not_a_pet"]["view"] == "separate"
    assert not (registry / TASK / "v1" / "pet_view.pt2").exists()

    # Lite0 against the weak production model, on Lite0's validation photos: accepted, with the numbers.
    strong = clone_run(real_runs["lite0"], tmp_path / "lite0")
    card = promote(TASK, run=strong, registry=reg)
    c = card["compared_with"]
    assert c["production_version"] == 1 and c["comparable"] and c["significantly_better"] and not c["forced"]
    validation = read_predictions(strong)["val"]
    assert c["photos"] == len(validation["targets"]) and c["candidate_only_right"] > c["production_only_right"]
    right = validation["probs"].argmax(1) == validation["targets"]
    assert c["candidate_accuracy"] == pytest.approx(float(right.mean()))
    b, n = c["candidate_only_right"], c["candidate_only_right"] + c["production_only_right"]
    assert c["p_value"] == pytest.approx(binomtest(b, n, 0.5, alternative="greater").pvalue) and c["p_value"] < 0.05
    assert "Compared with production v1" in (registry / TASK / "v2" / "card.md").read_text()

    # The weak run again, now against Lite0 on its own 400 validation photos: refused, numbers explained.
    before = (registry / TASK / "index.json").read_bytes()
    proc = script("promote.py", "--registry", registry, "--task", TASK, "--run", weak_run, check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "refused" in proc.stderr
    assert "not significantly better than production v2 on the same 400 photos" in proc.stderr
    assert "--force" in proc.stderr and "p = " in proc.stderr
    assert (registry / TASK / "index.json").read_bytes() == before  # nothing registered
    assert not (registry / TASK / "v3").exists()

    # --force overrides, and the card says so.
    script("promote.py", "--registry", registry, "--task", TASK, "--run", weak_run, "--force")
    forced = reg.card(TASK, 3)
    assert forced["status"] == "production" and forced["compared_with"]["forced"]
    assert forced["compared_with"]["production_accuracy"] > forced["compared_with"]["candidate_accuracy"]
    assert "promoted with `--force`" in (registry / TASK / "v3" / "card.md").read_text()

    # A rollback needs no test.
    rollback(TASK, 2, reg)
    assert reg.production(TASK)["version"] == 2


@pytest.mark.slow
def test_a_promoted_version_is_calibrated_and_served_calibrated(promoted_registry, real_runs, shared):
    card = json.loads((promoted_registry / TASK / "v1" / "card.json").read_text())
    cal = card["calibration"]
    assert cal["temperature"] > 0 and cal["figure"] == "reliability.png"
    assert (promoted_registry / TASK / "v1" / "reliability.png").stat().st_size > 10_000
    for split in ("val", "test"):
        assert 0 <= cal[split]["ece_after"] <= 1 and 0 <= cal[split]["ece_before"] <= 1
    # Fitted on val: val's NLL cannot get worse (T = 1 was a candidate).
    assert cal["val"]["nll_after"] <= cal["val"]["nll_before"] + 1e-9
    # The same numbers again from the run's own predictions, independently of promotion.
    predictions = read_predictions(real_runs["lite0"])
    again = calibrate({s: (predictions[s]["probs"], predictions[s]["targets"]) for s in ("val", "test")})
    assert again["temperature"] == pytest.approx(cal["temperature"], rel=1e-3)
    assert again["test"]["ece_after"] == pytest.approx(cal["test"]["ece_after"], abs=1e-6)

    # The export stays raw logits; the served probabilities are the calibrated ones.
    served = load_version(Registry(promoted_registry), TASK, 1)
    cats = sorted((shared / "cats_and_dogs_filtered" / "validation" / "cats").glob("*.jpg"))
    photos = [load_rgb(p) for p in cats[:4]]
    raw = served.probabilities(photos, calibrated=False)
    logits = torch.from_numpy(served.module(served.pre.batch_array(photos)))
    torch.testing.assert_close(torch.from_numpy(raw), torch.softmax(logits, 1))
    calibrated = apply_temperature(raw, cal["temperature"])  # float64 from calibration; the server's float32
    torch.testing.assert_close(torch.from_numpy(served.probabilities(photos)), torch.from_numpy(calibrated).float())
    assert "## Calibration" in (promoted_registry / TASK / "v1" / "card.md").read_text()


def test_only_a_backbone_that_is_exactly_imagenets_answers_not_a_pet_itself():
    model, _ = build_model("efficientnet_lite0", 2, pretrained=True)
    head = own_backbone_head(model, "efficientnet_lite0", 224)
    assert head is not None and head.out_features == 1000
    assert own_backbone_head(model, "efficientnet_lite0", 160) is None  # no threshold measured at 160 px
    trained = model.state_dict()
    bn = next(k for k in trained if k.endswith("running_mean"))
    trained[bn] = trained[bn] + 1e-3  # BatchNorm that trained moves its statistics: no longer ImageNet's
    model.load_state_dict(trained)
    assert own_backbone_head(model, "efficientnet_lite0", 224) is None
    scratch, _ = build_model("efficientnet_lite0", 2)
    assert own_backbone_head(scratch, "efficientnet_lite0", 224) is None


@pytest.mark.slow
def test_a_frozen_imagenet_backbone_answers_not_a_pet_from_the_served_pass(promoted_registry, shared):
    """The short Lite0 run trains only its head, so its promotion exports pet_view.pt2: the served logits and
    ImageNet's pet probability from one forward pass, equal to the full ImageNet classifier's own answer."""
    card = json.loads((promoted_registry / TASK / "v1" / "card.json").read_text())
    assert card["not_a_pet"]["view"] == "own_backbone" and card["not_a_pet"]["file"] == "pet_view.pt2"
    assert card["not_a_pet"]["threshold"] == OWN_BACKBONE_THRESHOLDS[("efficientnet_lite0", 224)]
    served = load_version(Registry(promoted_registry), TASK, 1)
    assert served.pet_module is not None and served.pet_threshold == card["not_a_pet"]["threshold"]
    from petlab.data.non_pets import sample_photo_files

    dogs = sorted((shared / "cats_and_dogs_filtered" / "validation" / "dogs").glob("*.jpg"))[:3]
    photos = [load_rgb(p) for p in [*dogs, next(p for p in sample_photo_files() if p.stem == "rocket")]]
    probs, pet = served.probabilities_and_pet(photos)
    batch = served.pre.batch_array(photos)
    with torch.inference_mode():
        expected = pet_probability(build_imagenet_classifier("efficientnet_lite0")(torch.from_numpy(batch)))
        plain = apply_temperature(torch.softmax(torch.from_numpy(served.module(batch)), 1), served.temperature)
    torch.testing.assert_close(torch.from_numpy(probs), plain)  # model.onnx alone serves the same probabilities
    torch.testing.assert_close(torch.from_numpy(pet), expected, atol=1e-5, rtol=1e-4)
    assert (pet[:3] > served.pet_threshold).all() and pet[3] < served.pet_threshold  # three dogs, one rocket
