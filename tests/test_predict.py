"""experiments/predict.py: labelling a folder of photos with the production model, a version or a run."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from petlab.data.non_pets import sample_photo_files
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
    (root / "misc").mkdir()  # a photo of no pet at all: scikit-image's rocket
    shutil.copy(next(p for p in sample_photo_files() if p.stem == "rocket"), root / "misc" / "rocket.jpg")
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
    assert set(by_file) == set(photos) | set(broken) | {"misc/rocket.jpg"}  # nothing hidden, nothing missing
    assert "11 files: 7 labelled, 4 unreadable" in proc.stderr
    for file, label in photos.items():
        row = by_file[file]
        assert row["label"] == label and row["error"] == "" and row["input"] == str(album)
        top = json.loads(row["top_k"])
        assert [p["label"] for p in top][0] == label and len(top) == 2
        assert float(row["probability"]) == top[0]["probability"] and 0.5 < float(row["probability"]) <= 1
        assert sum(p["probability"] for p in top) == pytest.approx(1, abs=1e-4)
        assert row["recognised"] in ("True", "False") and 0 <= float(row["pet_probability"]) <= 1
        assert row["model"].startswith("petlab-cats-vs-dogs v1 (onnx, sha256:")  # runtime and file fingerprint
    # every pet is recognised (cat.2001, a cat in a cardboard box, too: 36% against the threshold of 0.1), the
    # rocket is not, and still gets a label and its top-k
    assert {by_file[file]["recognised"] for file in photos} == {"True"}
    rocket = by_file["misc/rocket.jpg"]
    assert rocket["recognised"] == "False" and float(rocket["pet_probability"]) < 0.1
    assert rocket["label"] in ("cat", "dog") and rocket["error"] == ""
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
    assert b[0]["model"].startswith(f"run {real_runs['lite0'].name} (onnx, sha256:")


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


def test_an_output_predict_did_not_write_is_left_alone_unless_forced(promoted_registry, album, tmp_path):
    """--out once overwrote a dataset's own labels.csv without a word, and a JSON list of strings crashed."""
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\na.jpg,cat\n")
    strings = tmp_path / "names.json"
    strings.write_text('["a", "b"]')
    for out in (labels, strings):
        before = out.read_bytes()
        proc = script("predict.py", album / "2025", "--registry", promoted_registry, "--out", out, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert "is not an output of predict.py; pass --force" in error
        assert out.read_bytes() == before
    script("predict.py", album / "2025", "--registry", promoted_registry, "--out", labels, "--force")
    assert [r["file"] for r in read_csv(labels)] == DOGS
    (tmp_path / "dir.csv").mkdir()
    folder = script("predict.py", album / "2025", "--registry", promoted_registry, "--out", f"{tmp_path}/dir.csv/",
                    check=False)
    assert folder.returncode == 2 and "is a folder" in folder.stderr and "Traceback" not in folder.stderr


def test_formula_like_and_non_utf8_file_names_are_written_safely_and_read_back(promoted_registry, shared, tmp_path):
    """Names beginning = + - @ were written as spreadsheet formulas; a non-UTF-8 name crashed the CSV."""
    import os

    photo = shared / "cats_and_dogs_filtered/validation/dogs/dog.2001.jpg"
    folder = tmp_path / "odd"
    folder.mkdir()
    names = ["=HYPERLINK(1).jpg", "+1.jpg", "-2.jpg", "@sum.jpg", " =cmd.jpg", "\uff1dSUM(1).jpg", "|calc.jpg"]
    for name in names:
        shutil.copy(photo, folder / name)
    shutil.copy(photo, os.path.join(os.fsencode(folder), b"caf\xe9.jpg"))
    out = tmp_path / "odd.csv"
    script("predict.py", folder, "--registry", promoted_registry, "--out", out)
    raw = out.read_text(encoding="utf-8")
    for name in names:
        assert f"\n{folder},'{name}," in raw  # the cell starts with a quote, so no spreadsheet runs it
    assert "caf\\xe9.jpg" in raw
    again = script("predict.py", folder, "--registry", promoted_registry, "--out", out)
    assert "8 of 8 files already done" in again.stderr  # the quoted and escaped names read back as the same files


def test_a_rerun_redoes_rows_of_another_model_file_or_other_options(promoted_registry, album, tmp_path):
    """Rows were kept by model name and version alone: another registry's v1 reused them, and a --top-k 1 rerun
    kept top-2 rows."""
    out = tmp_path / "labels.json"
    script("predict.py", album / "2025", "--registry", promoted_registry, "--out", out, "--top-k", "2")
    narrower = script("predict.py", album / "2025", "--registry", promoted_registry, "--out", out, "--top-k", "1")
    assert "already done" not in narrower.stderr
    assert all(len(r["top_k"]) == 1 for r in json.loads(out.read_text()))
    other = tmp_path / "other-registry"
    shutil.copytree(promoted_registry, other)
    card = other / "cats_vs_dogs" / "v1" / "card.json"
    edited = json.loads(card.read_text())
    edited["calibration"] = {**(edited.get("calibration") or {}), "temperature": 3.0}
    card.write_text(json.dumps(edited))
    first = json.loads(out.read_text())
    proc = script("predict.py", album / "2025", "--registry", other, "--out", out, "--top-k", "1")
    assert "already done" not in proc.stderr
    second = json.loads(out.read_text())
    assert {r["model"] for r in second}.isdisjoint({r["model"] for r in first})
    assert [r["probability"] for r in second] != [r["probability"] for r in first]


def test_the_output_is_written_once_and_each_batch_only_appends(promoted_registry, album, tmp_path, monkeypatch):
    """predict.py rewrote the whole output after every batch: 1.52 GB written for a 4.8 MB output on 40,000
    files. Now a batch appends its rows to the journal, and the output is written once."""
    from petlab import batch_predict
    from petlab.registry import Registry

    writes, journal_sizes = [], []
    real_write = batch_predict.atomic_write

    def counted(path, text):
        writes.append(path)
        journal_sizes.append(batch_predict.journal_path(path).stat().st_size)
        return real_write(path, text)

    monkeypatch.setattr(batch_predict, "atomic_write", counted)
    out = tmp_path / "labels.csv"
    photos = batch_predict.find_photos([str(album)])
    with batch_predict.open_model("cats_vs_dogs", registry=Registry(promoted_registry)) as model:
        rows = batch_predict.predict_photos(model, photos, out, top_k=2, batch_size=1)
    assert writes == [out] and len(rows) == len(photos) == 11  # 6 pets, a rocket, 4 unreadable
    journal_lines = journal_sizes[0]  # bytes: a header and one line per photo, each written once
    assert journal_lines < 2 * len(out.read_bytes()), (journal_lines, len(out.read_bytes()))
    assert not batch_predict.journal_path(out).exists()  # the finished output replaces its journal


@pytest.mark.slow
def test_explain_writes_an_overlay_per_readable_photo(promoted_registry, album, tmp_path):
    from PIL import Image

    overlays = tmp_path / "overlays"
    proc = script("predict.py", album, "--registry", promoted_registry, "--out", tmp_path / "labels.csv",
                  "--explain", overlays)
    written = sorted(p.relative_to(overlays).as_posix() for p in overlays.rglob("*.png"))
    assert written == sorted(f"{f}.png" for f in [*(f"2024/summer/{n}" for n in CATS), *(f"2025/{n}" for n in DOGS),
                                                  "misc/rocket.jpg"]), proc.stderr
    for name in written:
        with Image.open(overlays / name) as overlay:
            photo = Image.open(album / name[:-4])
            assert overlay.format == "PNG" and abs(overlay.width / overlay.height - photo.width / photo.height) < 0.02


def test_the_journal_is_never_opened_through_a_link_and_a_foreign_file_of_its_name_is_kept(promoted_registry, album,
                                                                                           tmp_path):
    """predict.py opened `.NAME.partial.jsonl` following symbolic links, and truncated a foreign file of that
    name."""
    from petlab.batch_predict import journal_path

    out = tmp_path / "labels.csv"
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    journal_path(out).symlink_to(precious)
    linked = script("predict.py", album / "2025", "--registry", promoted_registry, "--out", out, check=False)
    assert linked.returncode == 2 and "is not a journal of predict.py" in linked.stderr, linked.stderr[-2000:]
    journal_path(out).unlink()
    journal_path(out).write_text("someone else's notes\n")
    foreign = script("predict.py", album / "2025", "--registry", promoted_registry, "--out", out, check=False)
    assert foreign.returncode == 2 and "is not a journal of predict.py" in foreign.stderr
    assert precious.read_text() == "keep me" and journal_path(out).read_text() == "someone else's notes\n"
