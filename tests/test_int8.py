"""int8 where it keeps the answers (petlab/export/quantize.py, petlab/export/int8.py): a version's int8 twin is
served only where its check against fp32 passes, and the card gives the figures either way."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from petlab.export.int8 import calibration_photos
from petlab.export.quantize import AGREEMENT_MIN, verdict
from petlab.inference.runtime import int8_kernels
from petlab.registry.card import card_markdown


def test_the_int8_verdict_serves_only_when_agreement_and_test_accuracy_both_pass():
    passing = verdict(0.996, 500, 0.990, 0.988)
    assert passing["served"] and passing["test_accuracy_difference_points"] == pytest.approx(-0.2)
    low = verdict(0.990, 500, 0.990, 0.990)
    assert not low["served"] and "agreement 99.00% on 500 validation photos is under 99.5%" in low["why"]
    drop = verdict(0.999, 500, 0.990, 0.985)
    assert not drop["served"] and "-0.50 points) is not within 0.3 points" in drop["why"]
    gain = verdict(0.999, 500, 0.980, 0.990)  # a swing either way means int8 answers differently: not served
    assert not gain["served"]
    pet = verdict(0.999, 500, 0.99, 0.99, {"val_pet_verdict_agreement": 0.98})
    assert not pet["served"] and "val pet verdict agreement 98.00% is under 99.5%" in pet["why"]
    assert verdict(AGREEMENT_MIN, 200, None, None)["served"]  # no test split: agreement alone decides
    assert verdict(0.9975, 400, 0.991, 0.994)["served"]  # +0.30 points is within 0.3 (measured: 0.30000000000000027)


def test_calibration_photos_come_from_train_with_the_classes_taking_turns():
    train = [(f"cat{i}.jpg", 0) for i in range(10)] + [(f"dog{i}.jpg", 1) for i in range(3)]
    picked = calibration_photos(train, 8, seed=0)
    assert len(picked) == len(set(picked)) == 8 and set(picked) <= {p for p, _ in train}
    assert sum(p.startswith("dog") for p in picked) == 3  # every dog, the cats filling the rest
    assert picked == calibration_photos(train, 8, seed=0)  # seeded
    assert len(calibration_photos(train, 100, seed=0)) == 13


def test_int8_kernels_tell_a_cpu_with_vnni_from_one_without():
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):  # ARM reports its own family, flags unread
        assert int8_kernels("flags : avx2 avx512_vnni") == platform.machine().lower()
        return
    assert int8_kernels("processor : 0\nflags\t\t: fpu sse2 avx2 fma\n") == "x86 without VNNI"  # Zen 2, laptops
    for flag in ("avx512_vnni", "avx_vnni", "amx_int8"):
        assert int8_kernels(f"flags\t\t: fpu avx2 {flag}\n") == "x86 with VNNI"
    assert int8_kernels() in ("x86 with VNNI", "x86 without VNNI")  # this machine's own /proc/cpuinfo


@pytest.mark.slow  # real_runs: experiments/run.py on the shared photos
def test_promote_int8_serves_the_twin_only_where_its_check_passes_and_the_card_shows_it(real_runs, tmp_path):
    import onnx

    from petlab.inference.model import load_version
    from petlab.registry import Registry
    from tests.registry import clone_run
    from tests.runs import script

    runs, registry = tmp_path / "runs", tmp_path / "registry"
    clone_run(real_runs["lite0"], runs / real_runs["lite0"].name)
    script("promote.py", "--registry", registry, "--task", "cats_vs_dogs", "--runs-root", runs, "--int8")
    folder = Registry(registry).version_dir("cats_vs_dogs", 1)
    card = json.loads((folder / "card.json").read_text())
    check = card["int8"]
    # Lite0: its own pet view is served too; a twin that failed is deleted and never named
    assert check["files"] == (["model.int8.onnx", "pet_view.int8.onnx"] if check["served"] else [])
    assert check["checked_photos"].startswith("validation photos (never trained on)")
    assert card["answers"]["served"]["logits"] == ("pet_view.int8.onnx" if check["served"] else "pet_view.onnx")
    assert check["calibration"]["photos"] > 0 and "training photos" in check["calibration"]["from"]
    assert check["val_photos"] > 0 and 0 <= check["val_top1_agreement"] <= 1
    assert check["val_pet_verdict_agreement"] is not None and check["test_accuracy_fp32"] is not None
    assert check["served"] == (check["val_top1_agreement"] >= 0.995 and check["val_pet_verdict_agreement"] >= 0.995
                               and abs(check["test_accuracy_difference_points"]) <= 0.3)
    assert "## int8" in (folder / "card.md").read_text()
    loaded = load_version(Registry(registry), "cats_vs_dogs", 1)
    assert check["checked_on"]["int8_kernels"] == int8_kernels() and "Checked on" in (folder / "card.md").read_text()
    if check["served"]:
        assert (loaded.fmt, loaded.pet_fmt) == ("onnx_int8", "onnx_int8")
        metadata = {p.key: p.value for p in onnx.load(str(folder / "model.int8.onnx")).metadata_props}
        assert metadata["petlab.precision"].startswith("int8") and json.loads(metadata["petlab.classes"]) == \
            card["classes"]
        # the same version on a CPU whose int8 kernels differ from the check's: fp32 answers, and says why
        other = "x86 without VNNI" if int8_kernels() == "x86 with VNNI" else "x86 with VNNI"
        card["int8"]["checked_on"]["int8_kernels"] = other
        (folder / "card.json").write_text(json.dumps(card))
        elsewhere = load_version(Registry(registry), "cats_vs_dogs", 1)
        assert (elsewhere.fmt, elsewhere.pet_fmt) == ("onnx", "onnx")
        assert f"ran on a CPU with {other} int8 kernels" in elsewhere.refused["model.int8.onnx"]
    else:
        assert (loaded.fmt, loaded.pet_fmt) == ("onnx", "onnx") and not (folder / "model.int8.onnx").exists()
        assert "not served" in (folder / "card.md").read_text()


@pytest.mark.slow  # promoted_registry: a real promotion
def test_an_int8_twin_that_fails_its_check_is_not_served_and_the_card_says_why(promoted_registry, real_runs,
                                                                              tmp_path):
    """Calibrated on flat grey images (the mistake the check is there for), the twin's activation ranges are
    wrong for real photos: its answers part from fp32's, so it is not kept and the card says why."""
    from petlab import rundir
    from petlab.export.int8 import write_int8
    from petlab.inference.model import load_version
    from petlab.inference.preprocessing import Preprocessing
    from petlab.registry import Registry

    registry = Registry(tmp_path / "registry")
    shutil.copytree(promoted_registry, registry.root)
    folder = registry.version_dir("cats_vs_dogs", 1)
    card = json.loads((folder / "card.json").read_text())
    grey = []
    for i in range(4):
        grey.append(tmp_path / f"grey{i}.png")
        Image.new("RGB", (300, 300), (120 + i, 120 + i, 120 + i)).save(grey[-1])
    predictions = rundir.read_predictions(real_runs["lite0"])
    check = write_int8(folder, card, Preprocessing.from_dict(card["preprocessing"]), [], predictions, 0,
                       calibration=[str(p) for p in grey], calibrated_on="4 flat grey images")
    assert not check["served"] and check["val_top1_agreement"] < AGREEMENT_MIN
    assert check["why"].startswith("top-1 agreement") and "is under 99.5%" in check["why"]
    assert not (folder / "model.int8.onnx").exists() and not (folder / "pet_view.int8.onnx").exists()
    assert check["files"] == []  # deleted: never named
    markdown = card_markdown({**card, "int8": check})
    assert ".int8.onnx" not in markdown
    assert "**not served**" in markdown and check["why"] in markdown and "4 flat grey images" in markdown
    (folder / "card.json").write_text(json.dumps({**card, "int8": check}))  # as promotion would record it
    loaded = load_version(registry, "cats_vs_dogs", 1)
    assert loaded.fmt == "onnx" and np.isfinite(loaded.temperature)
