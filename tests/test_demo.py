"""The demo against a real running server: JSON API, odd and bad uploads, gradio_client, and a real browser."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image

from petlab.models.pet_view import OWN_BACKBONE_THRESHOLDS
from tests.imaging import encode, odd_photos, png_bomb, write_bad_files
from tests.runs import REPO
from tests.servers import demo_process

CATS = ["cat.2001.jpg", "cat.2010.jpg", "cat.2027.jpg", "cat.2042.jpg"]
DOGS = ["dog.2001.jpg", "dog.2010.jpg", "dog.2027.jpg", "dog.2042.jpg"]
# the served model is a frozen ImageNet Lite0 at 224 px: its own backbone answers "is this a pet?"
THRESHOLD = OWN_BACKBONE_THRESHOLDS[("efficientnet_lite0", 224)]


@pytest.fixture(scope="module")
def server(promoted_registry, tmp_path_factory):
    log = tmp_path_factory.mktemp("demo") / "demo.log"
    with demo_process(promoted_registry, log) as url:
        yield url, log


@pytest.fixture(scope="module")
def validation(shared) -> Path:
    return shared / "cats_and_dogs_filtered" / "validation"


def predict(url, data: bytes, name="photo.jpg", **fields):
    return httpx.post(f"{url}/api/predict", files={"file": (name, data)}, data=fields, timeout=60)


def probabilities(response) -> dict:
    assert response.status_code == 200, response.text
    assert isinstance(response.json()["recognised"], bool)  # every prediction says whether it looks like a pet
    return {p["label"]: p["probability"] for p in response.json()["predictions"]}


@pytest.mark.slow
def test_health_reports_the_production_version(server):
    url, _ = server
    health = httpx.get(f"{url}/api/health").json()
    assert health["status"] == "ok"
    model = health["models"]["cats_vs_dogs"]
    assert model["name"] == "petlab-cats-vs-dogs" and model["version"] == 1 and model["format"] == "onnx"


@pytest.mark.slow
def test_health_and_the_served_card_hold_no_absolute_path(server, promoted_registry):
    from petlab.registry import Registry
    from petlab.registry.card import card_markdown

    url, _ = server
    health = httpx.get(f"{url}/api/health").json()
    card = Registry(promoted_registry).card("cats_vs_dogs", 1)
    for shown in (json.dumps(health), json.dumps(card), card_markdown(card)):
        assert str(promoted_registry) not in shown and str(REPO) not in shown and str(REPO.parent) not in shown
        assert str(promoted_registry.parent) not in shown  # the test's temp folder, where the runs and archives are
    assert health["registry"] == promoted_registry.name
    assert card["source_run"] and "/" not in card["source_run"] and "/" not in card["dataset_root"]


@pytest.mark.slow
def test_no_export_holds_a_path_of_the_machine_that_built_it(promoted_registry):
    """model.pt2 once held 479 absolute paths (torch's stack traces), model.ts its debug tables: all public."""
    import sys as _sys
    import zipfile

    version = promoted_registry / "cats_vs_dogs" / "v1"
    machine_paths = {str(REPO), str(Path(_sys.prefix)), str(Path(_sys.base_prefix))}
    for name in ("model.pt2", "model.ts", "pet_view.pt2", "model.onnx", "pet_view.onnx"):
        file = version / name
        if not file.exists():
            continue
        blobs = [file.read_bytes()]
        if zipfile.is_zipfile(file):
            with zipfile.ZipFile(file) as archive:
                blobs += [archive.read(n) for n in archive.namelist()]
        for path in machine_paths:
            assert not any(path.encode() in blob for blob in blobs), (name, path)


@pytest.mark.slow
def test_the_cards_figure_is_served_where_the_card_is_shown(server, promoted_registry, tmp_path):
    """The card linked reliability.png, which neither the page nor the Space could serve: a broken image."""
    url, _ = server
    config = httpx.get(f"{url}/config", timeout=30).json()
    (card,) = [c["props"]["value"] for c in config["components"] if c["props"].get("elem_id") == "card"]
    link = card.split("![reliability diagram](", 1)[1].split(")", 1)[0]
    assert link == "/api/figures/cats_vs_dogs/reliability.png"
    figure = httpx.get(f"{url}{link}", timeout=30)
    assert figure.status_code == 200 and figure.headers["content-type"] == "image/png"
    assert figure.content == (promoted_registry / "cats_vs_dogs" / "v1" / "reliability.png").read_bytes()
    for other in ("card.json", "state_dict.pt", "..%2Fv1%2Fcard.json"):
        assert httpx.get(f"{url}/api/figures/cats_vs_dogs/{other}", timeout=30).status_code == 404
    subprocess.run([sys.executable, str(REPO / "demo/build_space.py"), "--out", str(tmp_path / "space"),
                    "--registry", str(promoted_registry)], check=True, capture_output=True)
    assert (tmp_path / "space" / "models/registry/cats_vs_dogs/v1/reliability.png").is_file()
    assert (tmp_path / "space" / "models/registry/cats_vs_dogs/v1/README.md").is_file()  # the HF-format card


@pytest.mark.slow
def test_the_page_serves_example_photos_but_no_registry_file(server, promoted_registry):
    url, _ = server
    version = promoted_registry.resolve() / "cats_vs_dogs" / "v1"
    example = next((version / "examples").iterdir())
    assert httpx.get(f"{url}/gradio_api/file={example}").status_code == 200
    for private in ("state_dict.pt", "model.onnx", "pet_view.onnx", "model.pt2", "model.ts", "card.json"):
        response = httpx.get(f"{url}/gradio_api/file={version / private}")
        assert response.status_code == 404, (private, response.status_code)
    assert httpx.get(f"{url}/gradio_api/file={promoted_registry.resolve() / 'cats_vs_dogs' / 'index.json'}") \
        .status_code == 404


@pytest.mark.slow
def test_clear_cats_and_dogs_get_the_right_label(server, validation):
    url, _ = server
    for label, names in (("cat", CATS), ("dog", DOGS)):
        for name in names:
            response = predict(url, (validation / f"{label}s" / name).read_bytes(), name, top_k="2")
            body = response.json()
            assert body["task"] == "cats_vs_dogs" and body["model"] == {
                "name": "petlab-cats-vs-dogs", "version": 1, "format": "onnx"}
            assert body["predictions"][0]["label"] == label, (name, body)
            # Lite0's ImageNet head at 224 px gives cat.2001 (a cat lying in a cardboard box) only 36% on dog and cat
            # classes: rejected at the old threshold (0.379), recognised at the one measured on every shared set
            # (0.1, petlab/inference/pet.py). Every clear pet is recognised.
            assert body["recognised"] is True and body["pet_probability"] >= THRESHOLD, (name, body)
            assert body["reason"] is None
            assert sum(p["probability"] for p in body["predictions"]) == pytest.approx(1.0, abs=1e-4)
            assert body["latency_ms"] > 0


@pytest.mark.slow
def test_every_odd_but_valid_photo_is_predicted(server, validation):
    url, _ = server
    upright = Image.open(validation / "cats" / CATS[0]).convert("RGB")
    baseline = probabilities(predict(url, encode(upright, "PNG"), "upright.png"))
    odd = odd_photos(upright)
    results = {name: probabilities(predict(url, data, name)) for name, data in odd.items()}
    # the EXIF orientation is applied: the rotated file predicts exactly as the upright one
    assert results["exif_rotated.png"]["cat"] == pytest.approx(baseline["cat"], abs=1e-5)
    # 16-bit is scaled, not clipped: the same as the 8-bit grayscale picture
    gray8 = probabilities(predict(url, encode(upright.convert("L"), "PNG"), "gray8.png"))
    assert results["sixteen_bit.png"]["cat"] == pytest.approx(gray8["cat"], abs=1e-4)
    # an animated GIF is judged by its first frame (the cat), not the blue second frame
    first = probabilities(predict(url, first_frame_png(odd["animated.gif"]), "first_frame.png"))
    assert results["animated.gif"]["cat"] == pytest.approx(first["cat"], abs=1e-5)
    for name in ("grayscale.jpg", "palette.png", "rgba.png", "cmyk.jpg", "animated.gif"):
        assert results[name]["cat"] > 0.5, (name, results[name])
    assert set(results["one_pixel.png"]) == {"cat", "dog"}


@pytest.mark.slow
def test_photos_that_are_not_pets_get_an_honest_answer_and_still_a_top_k(server):
    from petlab.data.non_pets import drawing, sample_photo_files

    url, _ = server
    photos = {p.name: p.read_bytes() for p in sample_photo_files() if p.stem in ("rocket", "coffee", "astronaut")}
    photos["drawing.png"] = encode(drawing(7), "PNG")
    for name, data in photos.items():
        body = predict(url, data, name).json()
        assert body["recognised"] is False, (name, body)
        assert "does not look like a cat or a dog" in body["reason"] and body["pet_probability"] < THRESHOLD
        assert [p["label"] for p in body["predictions"]] in (["cat", "dog"], ["dog", "cat"])
        assert sum(p["probability"] for p in body["predictions"]) == pytest.approx(1.0, abs=1e-4)
    # the Lite0 run's backbone is ImageNet's own, so it answers from the served forward pass (pet_view.pt2)
    check = httpx.get(f"{url}/api/health").json()["models"]["cats_vs_dogs"]["not_a_pet"]
    assert check["threshold"] == THRESHOLD and "own efficientnet_lite0 backbone" in check["score"]


def first_frame_png(gif: bytes) -> bytes:
    with Image.open(io.BytesIO(gif)) as img:
        img.seek(0)
        return encode(img.convert("RGB"), "PNG")


@pytest.mark.slow
def test_bad_uploads_get_a_clear_4xx_and_the_server_keeps_serving(server, validation, tmp_path):
    url, log = server
    good = (validation / "dogs" / DOGS[0]).read_bytes()
    bad_files = write_bad_files(tmp_path)
    cases = {
        "not_an_image": (400, lambda: predict(url, bad_files["not_an_image"].read_bytes(), "notes.jpg")),
        "empty": (400, lambda: predict(url, b"", "zero.jpg")),
        "truncated": (400, lambda: predict(url, good[: len(good) // 2], "half.jpg")),
        "too_large": (400, lambda: predict(url, png_bomb(30000), "bomb.png")),
        "missing_file": (400, lambda: httpx.post(f"{url}/api/predict", data={"task": "cats_vs_dogs"})),
        "unknown_task": (404, lambda: predict(url, good, task="zebras")),
        "bad_top_k": (422, lambda: predict(url, good, top_k="0")),
        "bad_top_k ": (422, lambda: predict(url, good, top_k="five")),
        "too_large ": (413, lambda: predict(url, os.urandom(11 * 1024 * 1024), "huge.jpg")),
    }
    for code, (status, send) in cases.items():
        response = send()
        assert response.status_code == status, (code, response.text)
        body = response.json()
        assert body["error"] == code.strip() and body["message"], body
        assert "Traceback" not in response.text
        assert probabilities(predict(url, good))["dog"] > 0.5  # the next good request still succeeds
    assert "zebras" in predict(url, good, task="zebras").json()["message"]
    assert "900000000 pixels" in predict(url, png_bomb(30000), "bomb.png").json()["message"]
    # one structured log line per request, with its outcome
    lines = [json.loads(line.split("petlab.demo: ", 1)[1]) for line in log.read_text().splitlines()
             if "petlab.demo: {" in line]
    outcomes = {entry["outcome"] for entry in lines}
    assert {"ok", "not_an_image", "empty", "truncated", "too_large", "missing_file", "unknown_task",
            "bad_top_k"} <= outcomes
    ok = [e for e in lines if e["outcome"] == "ok"]
    assert all(e["version"] == 1 and e["task"] == "cats_vs_dogs" and e["latency_ms"] > 0 for e in ok)


@pytest.mark.slow
def test_no_production_model_is_a_503_that_says_what_to_run(tmp_path, validation):
    with demo_process(tmp_path / "empty-registry", tmp_path / "demo.log") as url:
        assert httpx.get(f"{url}/api/health").json()["status"] == "no_production_model"
        response = predict(url, (validation / "cats" / CATS[0]).read_bytes())
        assert response.status_code == 503 and "promote.py" in response.json()["message"]
        assert str(tmp_path) not in response.json()["message"]  # the server's paths are its own business
        assert httpx.get(url).status_code == 200  # the page still renders


@pytest.mark.slow
def test_gradio_client_predicts(server, validation):
    from gradio_client import Client, handle_file

    url, _ = server
    client = Client(url, verbose=False)
    result, verdict = client.predict(handle_file(str(validation / "dogs" / DOGS[1])), "cats_vs_dogs",
                                     api_name="/classify")
    assert result["label"] == "dog"
    assert {c["label"] for c in result["confidences"]} == {"cat", "dog"}
    assert verdict.startswith("**Recognised as a pet**") and "Task `cats_vs_dogs`" in verdict  # it names its task
    endpoint = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/classify"]
    assert [r["label"] for r in endpoint["returns"]] == ["Prediction", "verdict"]  # no unnamed "value_7"
    task = next(p for p in endpoint["parameters"] if p["parameter_name"] == "task")
    assert task["parameter_default"] == "cats_vs_dogs" and "default cats_vs_dogs" in task["label"]  # said, not silent


@pytest.mark.slow
@pytest.mark.browser
def test_a_browser_uploads_a_photo_and_reads_the_label(server, validation, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from petlab.data.non_pets import sample_photo_files

    (rocket,) = [p for p in sample_photo_files() if p.stem == "rocket"]

    url, _ = server
    shots = Path(os.environ.get("PETLAB_SCREENSHOT_DIR") or tmp_path)
    with sync_playwright() as p:
        # Debian's chromium (installed by .ci/run), never a browser downloaded by Playwright.
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(url)
        page.locator("#photo input[type=file]").set_input_files(str(validation / "cats" / CATS[1]))
        expect(page.locator("#prediction")).to_contain_text("cat", timeout=60_000)
        expect(page.locator("#prediction")).to_contain_text("%", timeout=10_000)
        expect(page.locator("#served")).to_contain_text("petlab-cats-vs-dogs v1")
        expect(page.locator("#recognition")).to_contain_text("Recognised as a pet", timeout=10_000)
        # where the model looked: the overlay beside the prediction, a real image the browser decoded
        overlay = page.locator("#heatmap img")
        expect(overlay).to_be_visible(timeout=30_000)
        expect(page.locator("#heatmap")).to_contain_text("Where the model looked for 'cat'")
        assert overlay.evaluate("img => img.complete && img.naturalWidth") > 100
        page.screenshot(path=str(shots / "demo.png"), full_page=True)
        page.locator("#explain input[type=checkbox]").uncheck()  # the toggle hides it
        expect(overlay).to_have_count(0, timeout=30_000)
        page.locator("#explain input[type=checkbox]").check()
        expect(page.locator("#heatmap img")).to_be_visible(timeout=30_000)
        # a photo of a rocket: the page says so honestly, and still shows the model's guesses
        page.locator("#photo button[aria-label='Remove Image']").click()
        page.locator("#photo input[type=file]").set_input_files(str(rocket))
        expect(page.locator("#recognition")).to_contain_text("Not recognised", timeout=60_000)
        expect(page.locator("#recognition")).to_contain_text("does not look like a cat or a dog")
        expect(page.locator("#prediction")).to_contain_text("%")
        page.screenshot(path=str(shots / "demo_not_a_pet.png"), full_page=True)
        browser.close()
    assert (shots / "demo.png").stat().st_size > 20_000 and (shots / "demo_not_a_pet.png").stat().st_size > 20_000


@pytest.mark.slow
def test_the_latency_benchmark_runs_against_a_real_server(promoted_registry):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks/serve_latency.py"), "--registry",
                           str(promoted_registry), "--requests", "12", "--concurrency", "1", "4", "--repeats", "2",
                           "--json"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    # side by side: model.onnx on ONNX Runtime, and PyTorch (the weights-only state dict) as petlab served before it
    assert result["served_format"] == "onnx" and result["served_format_before"] == "eager"
    for phases in (result["serving"], result["serving_before"]):
        assert [p["concurrency"] for p in phases] == [1, 4]
    for phase in result["serving"] + result["serving_before"]:
        assert phase["errors"] == 0 and 0 < phase["p50_ms"] <= phase["p95_ms"] and phase["throughput_rps"] > 0
    assert all(p["p50_over_torch"] > 0 for p in result["serving"])
    for size in ("batch_1", "batch_8"):
        timing = result["inference"][size]
        assert timing["eager_ms"] > 0 and timing["torch_export_over_eager"] > 0 and timing["torchscript_ms"] > 0


@pytest.mark.slow
def test_the_hugging_face_space_installs_from_the_registry_into_a_fresh_venv_and_serves_without_torch(
        promoted_registry, validation, tmp_path):
    """The Space set no python_version (Hugging Face's default could not install numpy 2.4) and pulled 5.9 GB
    of CUDA torch to serve an ONNX file. Built as a user builds it, installed as Hugging Face installs it (a
    fresh venv, its requirements.txt from the package registry, nothing else), started as the Space starts
    it (app.py from inside the folder, no PYTHONPATH), and asked through gradio_client and /api/predict."""
    import time

    from gradio_client import Client, handle_file
    from huggingface_hub import SpaceCard

    space = tmp_path / "space"
    subprocess.run([sys.executable, str(REPO / "demo/build_space.py"), "--out", str(space), "--registry",
                    str(promoted_registry)], check=True, capture_output=True, cwd=REPO)
    front = SpaceCard.load(space / "README.md").data
    pins = {line for line in (space / "requirements.txt").read_text().splitlines() if "==" in line}
    assert pins <= set((REPO / "requirements.txt").read_text().splitlines())  # the same versions as the repo
    assert front.sdk == "gradio" and front.app_file == "app.py" and front.python_version == "3.11"
    assert f"gradio=={front.sdk_version}" in pins and not any(p.startswith(("torch", "efficientnet")) for p in pins)
    version = space / "models/registry/cats_vs_dogs/v1"
    assert {p.name for p in version.iterdir()} == {"model.onnx", "pet_view.onnx", "explain.onnx", "card.json",
                                                  "card.md", "examples", "README.md", "reliability.png"}
    card = json.loads((version / "card.json").read_text())
    assert set(card["files"]) <= {"model.onnx", "pet_view.onnx", "explain.onnx", "examples/", "reliability.png"}
    assert "state_dict.pt" not in (version / "card.md").read_text() + (version / "README.md").read_text()

    venv = tmp_path / "venv"
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-r",
                                str(space / "requirements.txt")], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr[-3000:]
    install_s = time.monotonic() - start
    size_mb = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20
    found = subprocess.run([str(python), "-c", "import importlib.util as u; print(u.find_spec('torch'))"],
                           capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "None"
    assert size_mb <= 600, size_mb  # the bound on what the Space installs

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    start = time.monotonic()
    with demo_process(None, tmp_path / "space.log", app=space / "app.py", cwd=space, python=python,
                      env=env) as url:
        response = predict(url, (validation / "dogs" / DOGS[2]).read_bytes(), top_k="2")
        cold_start_s = time.monotonic() - start
        assert probabilities(response)["dog"] > 0.5 and response.json()["recognised"] is True
        assert response.json()["model"]["format"] == "onnx"
        explained = predict(url, (validation / "dogs" / DOGS[2]).read_bytes(), explain="true").json()
        assert explained["heatmap"]["class"] == "dog" and explained["heatmap"]["overlay_png"]  # explain.onnx, no torch
        health = httpx.get(f"{url}/api/health").json()
        assert health["registry"] == "models/registry" and health["models"]["cats_vs_dogs"]["refused"] == {}
        result, verdict = Client(url, verbose=False).predict(handle_file(str(validation / "cats" / CATS[2])),
                                                             "cats_vs_dogs", api_name="/classify")
        assert result["label"] == "cat" and verdict.startswith("**Recognised as a pet**")
        figure = httpx.get(f"{url}/api/figures/cats_vs_dogs/reliability.png")  # the card's image is served
        assert figure.status_code == 200 and figure.content == (version / "reliability.png").read_bytes()
    assert "torch" not in (tmp_path / "space.log").read_text().lower()
    print(f"\nSpace in a fresh venv: install {install_s:.0f} s, {size_mb:.0f} MB; cold start to first answer "
          f"{cold_start_s:.1f} s")


@pytest.mark.slow
def test_several_photos_in_one_request_get_one_answer_each_in_order(server, validation):
    from demo.app import MAX_FILES_PER_REQUEST

    url, _ = server
    names = [("dogs", DOGS[1]), ("cats", CATS[1]), ("dogs", DOGS[2])]
    files = [("file", (name, (validation / folder / name).read_bytes())) for folder, name in names]
    files.insert(2, ("file", ("notes.jpg", b"not a photo at all")))
    body = httpx.post(f"{url}/api/predict", files=files, data={"top_k": "2"}, timeout=60).json()
    assert body["task"] == "cats_vs_dogs" and body["model"]["version"] == 1 and body["latency_ms"] > 0
    results = body["results"]
    assert [r["file"] for r in results] == [DOGS[1], CATS[1], "notes.jpg", DOGS[2]]
    assert [r["predictions"][0]["label"] for r in results if "predictions" in r] == ["dog", "cat", "dog"]
    assert results[2]["error"] == "not_an_image" and "notes.jpg" in results[2]["message"]
    # each answer is the one the photo gets alone
    response = predict(url, (validation / "cats" / CATS[1]).read_bytes(), CATS[1], top_k="2")
    together = {p["label"]: p["probability"] for p in results[1]["predictions"]}
    assert together == pytest.approx(probabilities(response), abs=1e-4)
    alone = response.json()
    assert results[1]["recognised"] == alone["recognised"]
    # one file keeps the single answer's shape
    assert "results" not in alone and alone["predictions"][0]["label"] == "cat"

    # the limit: one file more than allowed is refused as a whole, and the server goes on serving
    photo = (validation / "cats" / CATS[0]).read_bytes()
    too_many = [("file", (f"{i}.jpg", photo)) for i in range(MAX_FILES_PER_REQUEST + 1)]
    refused = httpx.post(f"{url}/api/predict", files=too_many, timeout=60)
    assert refused.status_code == 413 and refused.json()["error"] == "too_many_files"
    assert str(MAX_FILES_PER_REQUEST) in refused.json()["message"]
    at_limit = httpx.post(f"{url}/api/predict", files=too_many[:MAX_FILES_PER_REQUEST], timeout=60)
    assert at_limit.status_code == 200 and len(at_limit.json()["results"]) == MAX_FILES_PER_REQUEST


def check_heatmap(heatmap: dict, photo: bytes, label: str) -> None:
    """A well-formed explain=true answer: the class, a grid over the photo's own frame in [0, 1], zero where the
    model never looked (a wide photo's sides), and a PNG overlay of the photo's shape."""
    import base64

    import numpy as np

    image = Image.open(io.BytesIO(photo))
    grid = np.asarray(heatmap["grid"], dtype=np.float32)
    assert heatmap["class"] == label and grid.shape == (heatmap["rows"], heatmap["cols"])
    assert max(grid.shape) == 32 and abs(grid.shape[1] / grid.shape[0] - image.width / image.height) < 0.1
    assert 0 <= grid.min() and 0.5 < grid.max() <= 1
    if image.width > 1.2 * image.height:
        assert not grid[:, 0].any() and not grid[:, -1].any()  # the centre crop's sides: never seen
    overlay = Image.open(io.BytesIO(base64.b64decode(heatmap["overlay_png"])))
    assert overlay.format == "PNG" and abs(overlay.width / overlay.height - image.width / image.height) < 0.02
    assert all(0 <= v <= 1 for v in heatmap["peak"])


@pytest.mark.slow
def test_explain_true_returns_where_the_model_looked_for_the_class_asked(server, validation):
    url, _ = server
    photo = (validation / "dogs" / DOGS[1]).read_bytes()
    plain = predict(url, photo).json()
    assert "heatmap" not in plain
    body = predict(url, photo, explain="true").json()
    assert body["predictions"] == plain["predictions"] and body["recognised"] == plain["recognised"]  # same answer
    check_heatmap(body["heatmap"], photo, "dog")
    other = predict(url, photo, explain="true", explain_class="cat").json()["heatmap"]
    check_heatmap(other, photo, "cat")
    assert other["grid"] != body["heatmap"]["grid"]
    # several photos: one heatmap each, an unreadable file still gets its error
    files = [("file", (DOGS[1], photo)), ("file", ("notes.jpg", b"not a photo")),
             ("file", (CATS[1], (validation / "cats" / CATS[1]).read_bytes()))]
    results = httpx.post(f"{url}/api/predict", files=files, data={"explain": "true"}, timeout=60).json()["results"]
    check_heatmap(results[0]["heatmap"], photo, "dog")
    assert results[1]["error"] == "not_an_image" and "heatmap" not in results[1]
    check_heatmap(results[2]["heatmap"], (validation / "cats" / CATS[1]).read_bytes(), "cat")
    for fields, code in (({"explain": "maybe"}, "bad_explain"), ({"explain_class": "cat"}, "bad_explain"),
                         ({"explain": "true", "explain_class": "horse"}, "unknown_class")):
        refused = predict(url, photo, **fields)
        assert refused.status_code == 422 and refused.json()["error"] == code, refused.text


@pytest.mark.slow
def test_every_served_format_explains_with_the_same_map(promoted_registry, validation, tmp_path, monkeypatch):
    """explain.onnx on ONNX Runtime (what the server and the Space run), and PyTorch's eager model where there is
    no such file (a version promoted before it, or PETLAB_RUNTIME=torch): the same maps."""
    import shutil

    import numpy as np

    from petlab.registry import Registry
    from petlab.serving import ServedModels, decode_photo

    photos = [decode_photo(validation / "dogs" / DOGS[2]), decode_photo(validation / "cats" / CATS[2])]
    served = ServedModels(Registry(promoted_registry))
    onnx = served.model("cats_vs_dogs")
    assert onnx.explainer()[0] == "onnx"
    expected = onnx.probabilities_and_pet(photos, explain=True)
    assert expected[2].shape == (2, 2, 7, 7)
    older = tmp_path / "registry"
    shutil.copytree(promoted_registry, older)
    (older / "cats_vs_dogs" / "v1" / "explain.onnx").unlink()  # promoted before explain.onnx existed
    for registry, runtime in ((older, ""), (promoted_registry, "torch")):
        monkeypatch.setenv("PETLAB_RUNTIME", runtime)
        model = ServedModels(Registry(registry)).model("cats_vs_dogs")
        assert model.explainer()[0] == "eager"
        got = model.probabilities_and_pet(photos, explain=True)
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        answer = ServedModels(Registry(registry)).classify(model, photos[0], 2, explain=True)
        assert answer["heatmap"].label == "dog" and answer["heatmap"].frame.max() > 0.5
