"""Promotion, the registry and verified export, on the real short runs of the shared photos."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from petlab.data.images import load_rgb
from petlab.export import ExportError, export_and_verify, load_exported
from petlab.registry import Registry, RegistryError
from petlab.registry.promote import PromotionError, candidate_runs, check_metric, promote, rollback, select_best
from petlab.rundir import load_model
from tests.registry import clone_run
from tests.runs import REPO, script

TASK = "cats_vs_dogs"
# Validation and test accuracies written into the cloned runs: the test ranking is the opposite
# of the validation ranking, so a promotion that peeked at test would pick custom_cnn.
SCORES = {"custom_cnn": (0.90, 1.00), "lite0": (0.95, 0.50), "mobilenet_v2": (0.93, 0.99)}


@pytest.fixture
def candidates(real_runs, tmp_path) -> Path:
    root = tmp_path / "runs"
    for name, run in real_runs.items():
        clone_run(run, root / run.name, *SCORES[name])
    return root


def cli(registry: Path, *args, check=True):
    return script("promote.py", "--registry", registry, *args, check=check)


@pytest.mark.slow  # real_runs: experiments/run.py on the shared photos
def test_promotion_picks_the_best_validation_run_and_never_test(candidates, real_runs):
    records = candidate_runs(TASK, candidates)
    best, value = select_best(records, "val_accuracy")
    assert best.path.name == real_runs["lite0"].name and value == 0.95 and len(records) == 3
    best, value = select_best(records, "val_loss")  # lower is better for a loss
    assert value == min(r.results["val"]["loss"] for r in records)
    # with the test numbers removed entirely, the choice is the same
    for results in candidates.glob("*/results.json"):
        record = json.loads(results.read_text())
        del record["test"]
        results.write_text(json.dumps(record))
    assert select_best(candidate_runs(TASK, candidates), "val_accuracy")[0].path.name == real_runs["lite0"].name
    for metric in ("test_accuracy", "test_loss"):  # choosing by test is refused outright
        with pytest.raises(PromotionError, match="validation metric only"):
            check_metric(metric)


@pytest.mark.slow
def test_a_promoted_version_is_complete_verified_and_queued_in_comet(promoted_registry, real_runs, shared):
    folder = promoted_registry / TASK / "v1"
    card = json.loads((folder / "card.json").read_text())
    source = real_runs["lite0"]
    results = json.loads((source / "results.json").read_text())
    assert card["name"] == "petlab-cats-vs-dogs" and card["status"] == "production" and card["version"] == 1
    assert card["arch"] == "efficientnet_lite0" and card["classes"] == ["cat", "dog"]
    assert card["preprocessing"]["image_size"] == 224 and card["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert "centre-crop 224x224" in card["preprocessing"]["steps"]
    assert card["dataset"] == "cats_and_dogs_filtered" and card["git"]["commit"] == results["git"]["commit"]
    assert card["comet"]["key"] == results["tracking"]["key"] and card["created_at"]
    assert set(card["verification"]) == {"onnx", "torch_export", "torchscript"}
    onnx = card["verification"]["onnx"]
    assert onnx["file"] == "model.onnx" and onnx["same_top1"] and onnx["runtime"].startswith("onnxruntime ")
    assert max(onnx["max_abs_diff"].values()) <= onnx["tolerance"]["atol"]
    assert card["serving"]["cpu_order"][0] == "model.onnx" and "model.onnx" in (folder / "card.md").read_text()
    assert "# petlab-cats-vs-dogs v1 (production)" in (folder / "card.md").read_text()
    assert sorted(p.name for p in (folder / "examples").iterdir())[:2] == ["cat-1.jpg", "cat-2.jpg"]

    # the exports, loaded here independently, match the eager model on real photos
    trained = load_model(source)
    model, pre = trained.model, trained.preprocessing
    photos = sorted((shared / "cats_and_dogs_filtered" / "validation" / "dogs").glob("*.jpg"))[-8:]
    batch = pre.normalize(torch.stack([pre.eval_tensor(load_rgb(p)) for p in photos]))
    with torch.no_grad():
        expected = model(batch)
        for name in ("model.pt2", "model.ts"):
            exported = load_exported(folder / name)
            torch.testing.assert_close(exported(batch), expected)
            torch.testing.assert_close(exported(batch[:1]), expected[:1])
        onnx_model = load_exported(folder / "model.onnx")  # on ONNX Runtime
        assert type(onnx_model).__name__ == "OnnxModel"
        for images in (batch, batch[:1]):  # the logits equal the eager model's, and so does every top-1
            got = onnx_model(images)
            torch.testing.assert_close(got, expected[:len(images)], rtol=1e-4, atol=1e-4)
            assert torch.equal(got.argmax(1), expected[:len(images)].argmax(1))
    state = torch.load(folder / "state_dict.pt", weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())

    # offline, the Comet registration is queued in a new archive of the run's own experiment
    archive = Path(card["comet"]["archive"])  # relative to the runs folder the promotion read
    assert not archive.is_absolute() and archive.parts[0] == source.name
    archive = promoted_registry.parent / "runs" / archive  # conftest's promoted_registry
    assert archive.is_file() and not archive.is_relative_to(source)
    with zipfile.ZipFile(archive) as zf:
        messages = [json.loads(line) for line in zf.read("messages.json").decode().splitlines()]
    (register,) = [m["payload"] for m in messages if m["type"] == "register_model"]
    assert register["model_name"] == "petlab-cats-vs-dogs" and register["version"] == "1.0.0"
    assert register["status"] == "Production" and register["experiment_id"] == card["comet"]["key"]
    # the calibration goes with it: the reliability diagram and the temperature and ECEs
    figures = [m["payload"]["additional_params"]["figName"] for m in messages if m["type"] == "file_upload"
               and m["payload"]["upload_type"] == "visualization"]
    assert figures == ["v1_reliability"]
    others = {m["payload"]["key"]: m["payload"]["value"] for m in messages if m["type"] == "log_other"}
    assert others["promotion.v1.temperature"] == card["calibration"]["temperature"]
    assert others["promotion.v1.test_ece_after"] == pytest.approx(card["calibration"]["test"]["ece_after"])


@pytest.mark.slow  # real_runs: experiments/run.py on the shared photos
def test_a_new_production_archives_the_old_and_rollback_restores_it(real_runs, tmp_path):
    registry = tmp_path / "registry"
    reg = Registry(registry)
    for name in ("lite0", "mobilenet_v2"):  # forced: the gate is tested in test_trust.py
        promote(TASK, run=clone_run(real_runs[name], tmp_path / name), registry=reg, force=True)
    assert [(e["version"], e["status"]) for e in reg.versions(TASK)] == [(1, "archived"), (2, "production")]
    assert reg.card(TASK, 1)["status"] == "archived"
    assert json.loads((registry / TASK / "v1" / "card.json").read_text())["status"] == "archived"

    cli(registry, "--task", TASK, "--rollback", "1")
    assert [(e["version"], e["status"]) for e in reg.versions(TASK)] == [(1, "production"), (2, "archived")]
    assert "(production)" in (registry / TASK / "v1" / "card.md").read_text()
    listing = cli(registry, "--list").stdout.splitlines()
    assert listing[0].split()[:4] == ["task", "name", "version", "status"]
    assert listing[1].split()[2:5] == ["1", "production", "efficientnet_lite0"]
    assert listing[2].split()[2:5] == ["2", "archived", "mobilenet_v2"]

    with pytest.raises(RegistryError, match=r"no version 7 .*\(versions: \[1, 2\]\)"):
        rollback(TASK, 7, reg)


@pytest.mark.slow
def test_two_promotions_at_once_leave_a_consistent_registry(real_runs, tmp_path):
    registry = tmp_path / "registry"
    procs = [subprocess.Popen([sys.executable, str(REPO / "experiments/promote.py"), "--registry", str(registry),
                               "--task", TASK, "--run", str(real_runs[name]), "--force"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("lite0", "mobilenet_v2")]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    reg = Registry(registry)
    entries = reg.versions(TASK)
    assert sorted(e["version"] for e in entries) == [1, 2]
    assert sorted(e["status"] for e in entries) == ["archived", "production"]
    assert {Path(e["source_run"]).name for e in entries} == {real_runs["lite0"].name, real_runs["mobilenet_v2"].name}
    for e in entries:
        folder = registry / TASK / f"v{e['version']}"
        assert {"model.pt2", "model.ts", "state_dict.pt", "card.json", "card.md"} <= {p.name for p in folder.iterdir()}
        assert reg.card(TASK, e["version"])["version"] == e["version"]
    assert not list((registry / TASK).glob(".staging-*"))


@pytest.mark.slow
def test_a_promotion_killed_mid_write_leaves_the_previous_state(real_runs, tmp_path):
    registry = tmp_path / "registry"
    promote(TASK, run=clone_run(real_runs["lite0"], tmp_path / "lite0"), registry=Registry(registry))
    before = (registry / TASK / "index.json").read_bytes()
    mobilenet = clone_run(real_runs["mobilenet_v2"], tmp_path / "mobilenet_v2")
    proc = subprocess.Popen([sys.executable, str(REPO / "experiments/promote.py"), "--registry", str(registry),
                             "--task", TASK, "--run", str(mobilenet), "--force"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not any((registry / TASK).glob(".staging-*/model.ts")) and time.time() < deadline:
        time.sleep(0.05)  # killed while the export is being written
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (registry / TASK / "index.json").read_bytes() == before
    assert not (registry / TASK / "v2").exists()
    assert Registry(registry).production(TASK)["version"] == 1
    # the next promotion works, takes number 2, and clears the dead process's staging folder
    promote(TASK, run=mobilenet, registry=Registry(registry), force=True)
    assert [(e["version"], e["status"]) for e in Registry(registry).versions(TASK)] == [(1, "archived"),
                                                                                         (2, "production")]
    assert not list((registry / TASK).glob(".staging-*"))


@pytest.mark.slow  # real_runs: experiments/run.py on the shared photos
def test_promotion_errors_are_clear(real_runs, tmp_path):
    registry = Registry(tmp_path / "registry")
    with pytest.raises(PromotionError, match="no completed breeds runs"):
        promote("breeds", runs_root=real_runs["lite0"].parent, registry=registry)
    with pytest.raises(PromotionError, match="is not a completed run"):
        promote(TASK, run=tmp_path, registry=registry)
    with pytest.raises(PromotionError, match="is a cats_vs_dogs run, not breeds"):
        promote("breeds", run=real_runs["lite0"], registry=registry)
    assert registry.tasks() == []


class DataDependent(nn.Module):
    """A Python branch on a tensor's value: tracing freezes whichever branch the example took."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x):
        y = self.conv(x).mean(dim=(2, 3))
        if y.sum() > 0:
            return y
        return -y


def test_a_signal_during_an_export_stops_the_run_and_is_not_taken_for_a_failed_export(tmp_path):
    """Ctrl-C or SIGTERM raises Interrupted wherever the run is; inside the exporter's tracing it must not
    become "ONNX export failed" (and an export again, then PyTorch), or the run goes on evaluating."""
    from petlab.engine.outcome import Interrupted
    from petlab.export.onnx import export_onnx

    class SignalledWhileTracing(nn.Module):
        def forward(self, x):
            raise Interrupted("SIGTERM")

    with pytest.raises(Interrupted):
        export_onnx(SignalledWhileTracing(), torch.randn(2, 3, 8, 8), tmp_path / "model.onnx")


def test_a_tracer_warning_fails_the_export(tmp_path):
    images = torch.randn(11, 3, 16, 16)
    with pytest.raises(ExportError, match="TracerWarning"):
        export_and_verify(DataDependent().eval(), images[:2], [images[2:3], images[3:]], tmp_path)



def test_a_dropout_model_served_from_its_state_dict_alone_answers_a_photo(tiny, tmp_path):
    """predict.py's fallback when a version's exports are missing or damaged: its state dict (weights only),
    rebuilt with the dropout head it was trained with (it used to be rebuilt without, and failed on mismatched
    keys). The server itself refuses such a version: it serves ONNX only."""
    from petlab.engine.experiment import run_experiment
    from petlab.inference.model import load_version
    from petlab.registry.torch_fallback import load_weights_only
    from petlab.serving import ServedModels, ServingError

    outcome = run_experiment(tiny.shrink({"model.dropout": 0.2, "train.epochs": 1, "tracking.backend": "none"})
                             .config(output_dir=str(tmp_path / "runs")))
    assert outcome.status == "completed"
    registry = tmp_path / "registry"
    promote(TASK, run=outcome.run_dir, registry=Registry(registry))
    folder = registry / TASK / "v1"
    card = json.loads((folder / "card.json").read_text())
    assert card["dropout"] == 0.2 and "dropout=0.2" in card["files"]["state_dict.pt"]
    for export in [p for p in folder.iterdir() if p.suffix in (".onnx", ".pt2", ".ts")]:
        export.unlink()
    models = ServedModels(Registry(registry))
    with pytest.raises(ServingError, match="only ONNX is served"):
        models.model(TASK)
    model = load_version(Registry(registry), TASK, 1, fallback=load_weights_only)
    assert model.fmt == "eager"
    photo = sorted((tiny.data / "test" / "dogs").iterdir())[0]  # a real photo the model never trained on
    answer = models.classify(model, load_rgb(photo), 2)
    assert sorted(p["label"] for p in answer["predictions"]) == ["cat", "dog"]
    assert abs(sum(p["probability"] for p in answer["predictions"]) - 1) < 1e-3


def test_an_unreadable_run_is_skipped_with_its_reason_and_the_others_still_compete(tmp_path, caplog):
    """One run folder whose files could not be read once stopped `promote.py --task` for every other run."""
    import logging

    from petlab.registry.promote import candidate_runs

    def run(name, results, config="task: cats_vs_dogs\n"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "results.json").write_text(results)
        (folder / "config.yaml").write_text(config)

    done = {"status": "completed", "epochs_completed": 1, "wall_time_s": 1.0}  # what results.json's schema needs
    run("good", json.dumps({**done, "val": {"accuracy": 0.9}}))
    run("a-list", "[1, 2]")
    run("bad-date", json.dumps({**done, "started_at": "yesterday", "val": {"accuracy": 0.95}}))
    run("bad-config", json.dumps(done), config="[unclosed")
    run("no-schema", '{"status": "completed", "val": {"accuracy": 0.99}}')  # no epochs_completed, no wall time
    with caplog.at_level(logging.WARNING):
        records = candidate_runs("cats_vs_dogs", tmp_path)
    assert [r.run for r in records] == ["good"]
    for name in ("a-list", "bad-date", "bad-config", "no-schema"):
        assert any(name in r.getMessage() and "cannot be read" in r.getMessage() for r in caplog.records), name


@pytest.mark.slow
def test_the_onnx_exports_describe_themselves(promoted_registry):
    """model.onnx carried no class names, preprocessing or temperature: a program without petlab could not
    name its outputs or calibrate them. Read as a stranger reads it, through onnxruntime alone."""
    import json

    import onnxruntime

    version = promoted_registry / "cats_vs_dogs" / "v1"
    card = json.loads((version / "card.json").read_text())
    for name in ("model.onnx", "pet_view.onnx"):
        if not (version / name).exists():
            continue
        meta = onnxruntime.InferenceSession(str(version / name)).get_modelmeta().custom_metadata_map
        assert json.loads(meta["petlab.classes"]) == card["classes"] and meta["petlab.task"] == "cats_vs_dogs"
        assert float(meta["petlab.temperature"]) == pytest.approx(card["calibration"]["temperature"])
        pre = json.loads(meta["petlab.preprocessing"])
        assert pre["image_size"] == card["preprocessing"]["image_size"] and pre["mean"] == card["preprocessing"]["mean"]
        assert "softmax(log(p) / temperature)" in meta["petlab.outputs"] and meta["petlab.tta"] in ("none", "flip")


@pytest.mark.slow
def test_the_hugging_face_card_parses_with_huggingface_hub_and_holds_the_test_accuracy(promoted_registry):
    import json

    from huggingface_hub import ModelCard

    version = promoted_registry / "cats_vs_dogs" / "v1"
    card = json.loads((version / "card.json").read_text())
    hf = ModelCard.load(version / "README.md")
    (index,) = hf.data.to_dict()["model-index"]
    test = next(r for r in index["results"] if r["dataset"]["split"] == "test")
    accuracy = next(m for m in test["metrics"] if m["type"] == "accuracy")
    assert accuracy["value"] == pytest.approx(card["metrics"]["test"]["accuracy"])
    assert hf.data.license == "other" and "image-classification" in hf.data.tags
    assert hf.data.license_name and hf.data.license_link == "README.md#license" and "## License" in hf.text
    assert "![reliability diagram](reliability.png)" in hf.text  # a file beside it, in the registry and the Space


@pytest.mark.slow
def test_every_comet_archive_of_a_promoted_run_passes_comet_mls_own_checks(real_runs, promoted_registry, tmp_path):
    """The promotion's archive failed comet_ml's offline schema (register_model: `public` None, `workspace`
    None), so `comet upload` would flag the experiment with an error. Both archives of the promoted run (its
    training and its promotion), message by message, through the validators comet_ml's OfflineSender applies."""
    from tests.comet_archives import validate_archive

    key = json.loads((real_runs["lite0"] / "results.json").read_text())["tracking"]["key"]
    training = real_runs["lite0"] / "comet" / f"{key}.01.zip"  # (other tests promote this run too: more archives)
    in_the_run = list((real_runs["lite0"] / "comet").glob("*.zip"))
    # `comet upload runs/<id>/comet/*.zip` (a glob, sorted by name) sends the training before any promotion
    by_name, by_time = sorted(in_the_run), sorted(in_the_run, key=lambda p: p.stat().st_mtime)
    assert by_name == by_time and by_name[0] == training
    (promotion,) = (promoted_registry.parent / "runs").glob(f"*/comet/{key}.02.zip")  # queued in the clone
    assert promotion.name.startswith(key)  # the same experiment, continued
    archives = [training, promotion]
    counts = [validate_archive(archive, tmp_path) for archive in archives]
    assert counts[0]["parameter_msg"] > 50 and counts[0]["metric_msg"] > 0 and counts[0]["file_upload"] > 0
    assert counts[1]["register_model"] == 1 and counts[1]["file_upload"] >= 3  # model.pt2, card.json, card.md


def comet_upload(archives_glob: str, url: str) -> subprocess.CompletedProcess:
    """`comet upload <glob>` as a user types it (the shell expands the glob, sorted by name), against `url`."""
    env = {**os.environ, "COMET_URL_OVERRIDE": url, "COMET_API_KEY": "stub-key", "COMET_DISABLE_AUTO_LOGGING": "1",
           "COMET_ERROR_TRACKING_ENABLE": "false", "COMET_LOGGING_CONSOLE": "INFO"}  # a user's shell, not petlab's
    comet = Path(sys.executable).parent / "comet"
    return subprocess.run(f"{comet} upload {archives_glob}", shell=True, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_comet_upload_of_a_run_folder_sends_the_training_before_its_promotion(real_runs, promoted_registry,
                                                                              tmp_path):
    """`comet upload runs/<id>/comet/*.zip` with comet_ml's own sender against a local server that, like
    Comet's, refuses to continue an experiment it has not created: the training archive creates it, the
    promotion's continues it. The same two archives under comet_ml's own names (`<key>.zip`, a continuation
    `<key>-1.zip`) are sent continuation first, and the server refuses it: the stub tells the orders apart."""
    from tests.servers import comet_stub_server

    key = json.loads((real_runs["lite0"] / "results.json").read_text())["tracking"]["key"]
    (folder,) = {archive.parent for archive in (promoted_registry.parent / "runs").glob("*/comet/*.zip")}
    assert sorted(p.name for p in folder.glob("*.zip")) == [f"{key}.01.zip", f"{key}.02.zip"]
    with comet_stub_server() as (url, log):
        proc = comet_upload(f"{folder}/*.zip", url)
        assert proc.returncode == 0 and "Number of uploaded experiments: 2" in proc.stderr, proc.stderr[-2000:]
        assert [entry for entry in log if entry[0] in ("create", "get")] == [("create", key), ("get", key)]
        assert ("POST", "/clientlib/batch/logger/experiment/metric") in log  # the run's metrics went too
    unnumbered = tmp_path / "comet_ml_names"
    unnumbered.mkdir()
    shutil.copy(folder / f"{key}.01.zip", unnumbered / f"{key}.zip")
    shutil.copy(folder / f"{key}.02.zip", unnumbered / f"{key}-1.zip")
    with comet_stub_server() as (url, log):
        proc = comet_upload(f"{unnumbered}/*.zip", url)
        assert [entry for entry in log if entry[0] in ("create", "get")][0] == ("get", key)
        assert "failed experiment uploads: 1" in proc.stderr, proc.stderr[-2000:]


SNIPPET_HARNESS = """
import json, sys
sys.path.insert(0, sys.argv[1])  # python -S: no site-packages; only the three packages linked there
exec(open(sys.argv[2]).read())
print(json.dumps({path: probabilities(path) for path in sys.argv[3:]}))
print(sorted({m.split('.')[0] for m in sys.modules} & {"torch", "petlab", "torchvision"}))
"""


@pytest.fixture(scope="module")
def int8_registry(real_runs, tmp_path_factory):
    """The short Lite0 run promoted with --int8: its twins (model.int8.onnx and pet_view.int8.onnx) serve."""
    from tests.registry import clone_run

    base = tmp_path_factory.mktemp("int8")
    clone_run(real_runs["lite0"], base / "runs" / real_runs["lite0"].name)
    script("promote.py", "--registry", base / "registry", "--task", "cats_vs_dogs", "--runs-root", base / "runs",
           "--int8")
    return base / "registry"


@pytest.fixture(scope="module")
def int8_separate_view_registry(shared, tmp_path_factory):
    """MobileNetV2 fine-tuned from the shared ImageNet weights, promoted with --int8: its backbone is no longer
    ImageNet's, so "not a pet" comes from the separate ImageNet view while model.int8.onnx gives the labels.
    Trained enough (3 epochs of 8 batches) that its int8 twin keeps every validation answer here."""
    from tests.recipe import shipped
    from tests.runs import only_run_dir

    base = tmp_path_factory.mktemp("int8_separate_view")
    recipe = shipped("mobilenet_v2_cats_vs_dogs", {
        "train.epochs": 3, "train.limit_batches": 8, "train.batch_size": 32,
        "model.weights": str(shared.parent / "weights/mobilenet_v2_from_qnnpack_float-52fff228.pth")})
    script("run.py", *recipe.on(shared / "cats_and_dogs_filtered").argv("--output-dir", base / "runs"))
    only_run_dir(base / "runs")
    script("promote.py", "--registry", base / "registry", "--task", "cats_vs_dogs", "--runs-root", base / "runs",
           "--int8")
    card = json.loads((base / "registry" / "cats_vs_dogs" / "v1" / "card.json").read_text())
    assert card["int8"]["served"], f"the int8 check refused on this CPU: {card['int8']['why']}"
    return base / "registry"


SERVED_CONFIGURATIONS = {  # the registry fixture, and the files the card must name as answering
    "fp32": ("promoted_registry", {"logits": "pet_view.onnx", "pet_probability": "pet_view.onnx"}),
    "int8 with its own pet view": ("int8_registry", {"logits": "pet_view.int8.onnx",
                                                     "pet_probability": "pet_view.int8.onnx"}),
    "int8 with the separate ImageNet view": ("int8_separate_view_registry", {
        "logits": "model.int8.onnx", "pet_probability": "imagenet_view.onnx"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("configuration", list(SERVED_CONFIGURATIONS))
def test_the_models_readme_snippet_reproduces_petlabs_probabilities_without_petlab(configuration, request, shared,
                                                                                    tmp_path):
    """The card's "Input" paragraph was not enough: a stranger's usual PIL code got 0 of 378 crops identical
    and probabilities 0.35 apart; and once int8 served, the snippet read model.onnx while the server answered
    from pet_view.int8.onnx (5.1e-2 apart). The snippet in models/README.md, run where only onnxruntime, numpy
    and Pillow can be imported, on real photos of several shapes, against what petlab serves, for each served
    configuration: it reads the file that answers from the card."""
    fixture, answering = SERVED_CONFIGURATIONS[configuration]
    promoted_registry = request.getfixturevalue(fixture)
    import importlib.util
    import re

    from petlab.serving import ServedModels, decode_photo

    readme = (REPO / "models" / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert len([line for line in snippet.splitlines() if line.strip()]) <= 25  # a snippet, not a library
    (tmp_path / "snippet.py").write_text(snippet)
    (tmp_path / "harness.py").write_text(SNIPPET_HARNESS)
    site = tmp_path / "site"  # the import path: onnxruntime, numpy and Pillow, nothing else
    site.mkdir()
    for package in ("onnxruntime", "numpy", "PIL"):
        folder = Path(importlib.util.find_spec(package).origin).parent
        (site / package).symlink_to(folder)
        libs = folder.parent / f"{'pillow' if package == 'PIL' else package}.libs"  # their bundled shared libraries
        if libs.is_dir():
            (site / libs.name).symlink_to(libs)
    photos = [*sorted((shared / "cats_and_dogs_filtered" / "validation" / "cats").glob("*.jpg"))[:12],
              *sorted((shared / "cats_and_dogs_filtered" / "validation" / "dogs").glob("*.jpg"))[:12],
              *sorted((shared / "oxford-iiit-pet-3breeds" / "images").glob("*.jpg"))[::40]]
    sizes = {decode_photo(p).size for p in photos}
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes)  # landscape and portrait
    version = promoted_registry / "cats_vs_dogs" / "v1"
    out = subprocess.run([sys.executable, "-S", "-E", str(tmp_path / "harness.py"), str(site),
                          str(tmp_path / "snippet.py"), *map(str, photos)], cwd=version, capture_output=True,
                         text=True, check=True)
    theirs, imported = out.stdout.strip().splitlines()
    assert imported == "[]"  # neither torch nor petlab was there to help
    theirs = json.loads(theirs)
    served = ServedModels(Registry(promoted_registry))
    model = served.model("cats_vs_dogs")
    card = json.loads((version / "card.json").read_text())
    assert card["answers"]["served"] == answering  # the card names the files that answer
    assert model.fmt == ("onnx_int8" if "int8" in configuration else "onnx")  # and the server answers from them
    assert all((version / name).is_file() for name in card["files"] if name != "examples/")  # nothing deleted named
    ours = model.probabilities([decode_photo(p) for p in photos])
    gaps = [abs(theirs[str(p)][name] - float(ours[row, col])) for row, p in enumerate(photos)
            for col, name in enumerate(model.classes)]
    assert len(gaps) == 2 * len(photos) and max(gaps) < 1e-4, max(gaps)
