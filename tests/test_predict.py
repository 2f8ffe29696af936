"""experiments/predict.py: labelling a folder of photos with the production model, a version or a run."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from tests.imaging import write_bad_files
from tests.runs import script

pytestmark = pytest.mark.slow  # predict.py runs as a user runs it, against a promoted registry

CATS = ["cat.2001.jpg", "cat.2010.jpg", "cat.2027.jpg"]
DOGS = ["dog.2001.jpg", "dog.2010.jpg", "dog.2027.jpg"]


@pytest.fixture
def album(shared, tmp_path) -> Path:
    """A nested folder as people have them: photos two levels deep, clutter, broken files and hidden entries."""
    validation = shared / "cats_and_dogs_filtered" / "validation"
    root = tmp_path / "album"
    (root / "2024" / "summer").mkdir(parents=True)
    (root / "2025").mkdir()
    for name in CATS:
        shutil.copy(validation / "cats" / name, root / "2024" / "summer" / name)
    for name in DOGS:
        shutil.copy(validation / "dogs" / name, root / "2025" / name)
    write_bad_files(root / "broken")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "2025" / "._dog.2001.jpg").write_bytes(b"\0\5\26\7 resource fork")
    (root / ".thumbnails").mkdir()
    shutil.copy(validation / "dogs" / DOGS[0], root / ".thumbnails" / "x.jpg")
    return root


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_nested_folder_gets_a_row_per_photo_and_a_reason_per_unreadable_file(promoted_registry, album, tmp_path):
    out = tmp_path / "labels.csv"
    proc = script("predict.py", album, "--registry", promoted_registry, "--out", out, "--top-k", "2")
    rows = read_csv(out)
    by_file = {r["file"]: r for r in rows}
    photos = {f"2024/summer/{n}": "cat" for n in CATS} | {f"2025/{n}": "dog" for n in DOGS}
    broken = {"broken/zero.jpg": "empty", "broken/notes.jpg": "not_an_image", "broken/truncated.jpg": "truncated",
              "broken/garbled.png": "corrupt"}
    assert set(by_file) == set(photos) | set(broken)  # nothing hidden, nothing missing, paths relative to the input
    assert "10 files: 6 labelled, 4 unreadable" in proc.stderr
    for file, label in photos.items():
        row = by_file[file]
        assert row["label"] == label and row["error"] == "" and row["input"] == str(album)
        top = json.loads(row["top_k"])
        assert [p["label"] for p in top][0] == label and len(top) == 2
        assert float(row["probability"]) == top[0]["probability"] and 0.5 < float(row["probability"]) <= 1
        assert sum(p["probability"] for p in top) == pytest.approx(1, abs=1e-4)
        assert row["recognised"] in ("True", "False") and 0 <= float(row["pet_probability"]) <= 1
        assert row["model"] == "petlab-cats-vs-dogs v1"
    # cat.2001 is the cat in a cardboard box that ImageNet's view does not see as a pet (test_demo.py)
    assert by_file["2024/summer/cat.2001.jpg"]["recognised"] == "False"
    assert by_file["2025/dog.2010.jpg"]["recognised"] == "True"
    for file, reason in broken.items():
        assert by_file[file]["label"] == "" and by_file[file]["error"].startswith(f"{reason}:"), by_file[file]

    # JSON, and a single file given by its path
    as_json = tmp_path / "one.json"
    script("predict.py", album / "2025" / DOGS[1], "--registry", promoted_registry, "--out", as_json)
    (row,) = json.loads(as_json.read_text())
    assert row["file"] == DOGS[1] and row["label"] == "dog" and len(row["top_k"]) == 2  # two classes: top-2
    assert row["recognised"] is True and row["probability"] == pytest.approx(float(by_file[f"2025/{DOGS[1]}"]
                                                                                      ["probability"]), abs=1e-5)


def test_a_rerun_over_a_partial_output_predicts_only_the_files_left(promoted_registry, album, tmp_path):
    out = tmp_path / "labels.csv"
    script("predict.py", album / "2025", "--registry", promoted_registry, "--out", out, "--batch-size", "2")
    first = read_csv(out)
    assert [r["file"] for r in first] == DOGS
    # as an interrupted run leaves it: the rows done so far; one of them marked, to see it is not redone
    first[0]["probability"] = "0.123456"
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(first[0]))
        writer.writeheader()
        writer.writerows(first[:2])
    proc = script("predict.py", album / "2025", "--registry", promoted_registry, "--out", out)
    again = read_csv(out)
    assert [r["file"] for r in again] == DOGS
    assert again[0]["probability"] == "0.123456"  # kept, not predicted again
    assert again[2]["label"] == "dog" and again[2]["probability"] == first[2]["probability"]
    assert "2 of 3 files already done" in proc.stderr


def test_a_run_directory_labels_as_its_promoted_version_does(promoted_registry, real_runs, album, tmp_path):
    registered, from_run = tmp_path / "registered.json", tmp_path / "run.json"
    script("predict.py", album / "2025", "--registry", promoted_registry, "--registry-version", "1",
           "--out", registered)
    script("predict.py", album / "2025", "--run", real_runs["lite0"], "--out", from_run)
    a, b = json.loads(registered.read_text()), json.loads(from_run.read_text())
    assert [r["label"] for r in a] == [r["label"] for r in b] == ["dog"] * 3
    # the same weights, the same temperature fitted on the same validation predictions
    assert [r["probability"] for r in a] == pytest.approx([r["probability"] for r in b], abs=1e-4)
    assert b[0]["model"] == f"run {real_runs['lite0'].name}"


def test_bad_requests_fail_with_one_line(promoted_registry, tmp_path):
    missing = script("predict.py", tmp_path / "nowhere", "--registry", promoted_registry, check=False)
    assert missing.returncode == 2 and "error: no such file or folder" in missing.stderr
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"x")
    empty = script("predict.py", tmp_path / "empty", "--registry", promoted_registry, check=False)
    assert empty.returncode == 2 and "error: no files under" in empty.stderr
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"x")
    no_version = script("predict.py", photo, "--registry", promoted_registry, "--registry-version", "7", check=False)
    assert no_version.returncode == 2 and "v7 is not in the registry" in no_version.stderr
    wrong_out = script("predict.py", photo, "--registry", promoted_registry, "--out", tmp_path / "x.parquet",
                       check=False)
    assert wrong_out.returncode == 2 and "write .csv or .json" in wrong_out.stderr
    nothing = script("predict.py", photo, "--registry", tmp_path / "no-registry", check=False)
    assert nothing.returncode == 2 and "pass --task" in nothing.stderr


def test_the_labelling_benchmark_runs_on_the_production_model(promoted_registry, shared, tmp_path):
    import subprocess
    import sys

    from tests.runs import REPO

    report = tmp_path / "batch_predict.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "batch_predict.py"), "--registry",
                           str(promoted_registry), "--limit", "24", "--batch-sizes", "1", "8", "--report", str(report)],
                          capture_output=True, text=True, cwd=REPO, check=True)
    figures = json.loads(report.read_text())
    assert figures["photos"] == 24 and set(figures["by_batch_size"]) == {"1", "8"}
    assert all(f["photos_per_s"] > 0 for f in figures["by_batch_size"].values())
    assert "photos/s" in proc.stdout and "petlab-cats-vs-dogs v1" in proc.stdout
