"""The data audit (petlab/audit.py, experiments/audit.py) on real photos with dirt put in on purpose."""

from __future__ import annotations

import csv
import html
import random
import re
import shutil
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from petlab.audit import label_error_ranking, out_of_fold_probabilities, run_audit
from petlab.config import load_config
from petlab.engine.context import load_run_splits
from petlab.errors import ConfigError
from tests.dirty_data import flip_labels, leak_into


def photo_folder(shared: Path, root: Path, per_class: dict[str, int]) -> Path:
    """An ImageFolder of the first photos of each shared cats-vs-dogs class: {split: photos per class}."""
    source = {"train": shared / "cats_and_dogs_filtered" / "train",
              "test": shared / "cats_and_dogs_filtered" / "validation"}
    for split, n in per_class.items():
        for cls in ("cats", "dogs"):
            (root / split / cls).mkdir(parents=True)
            for photo in sorted((source[split] / cls).iterdir())[:n]:
                shutil.copyfile(photo, root / split / cls / photo.name)
    return root


def card_text(registry: Path) -> str:
    return (registry / "cats_vs_dogs" / "v1" / "card.md").read_text()


def findings(out: Path, root: Path) -> list[dict]:
    """The rows of a findings.csv, their files (relative to the data folder there) made absolute under `root`."""
    rows = list(csv.DictReader(open(out / "findings.csv")))
    for row in rows:
        assert not Path(row["file"]).is_absolute(), row  # a report travels: paths relative to the data folder
        for key in ("file", "partner_file"):
            if row[key] and row["kind"] != "unreadable":
                row[key] = str(root / row[key])
    return rows


@pytest.fixture(scope="module")
def audited(shared, tmp_path_factory):
    """Two audits of the same 100 real photos: as they are, and with 4 train labels flipped and 3 train photos
    leaked into test (80% size, 10% crop, JPEG quality 60, one mirrored)."""
    base = tmp_path_factory.mktemp("audit")
    clean = photo_folder(shared, base / "clean", {"train": 30, "test": 20})
    dirty = photo_folder(shared, base / "dirty", {"train": 30, "test": 20})
    flipped = flip_labels(dirty / "train", 4 / 60, seed=0)
    leaked = leak_into(dirty / "train", dirty / "test", 3, 1, seed=1)
    reports = {name: base / "reports" / name for name in ("clean", "dirty")}
    infos = {name: run_audit(str(folder), "cats_vs_dogs", reports[name], tracking="none")
             for name, folder in (("clean", clean), ("dirty", dirty))}
    return {"reports": reports, "infos": infos, "flipped": flipped, "leaked": leaked,
            "folders": {"clean": clean, "dirty": dirty}}


def test_injected_leaks_and_flipped_labels_are_found(audited):
    rows = findings(audited["reports"]["dirty"], audited["folders"]["dirty"])
    leaks = {(r["file"], r["partner_file"]) for r in rows if r["kind"] == "leak"}
    assert set(audited["leaked"].items()) <= leaks  # every copy, with the train photo it came from
    assert audited["infos"]["dirty"]["summary"]["test_photos_with_a_near_copy_in_train"] == 3
    ranked = [r for r in rows if r["kind"] == "label_error"]
    top = {r["file"]: r["suggested_label"] for r in ranked[:len(audited["flipped"])]}
    assert set(top) == set(audited["flipped"])
    for file, true_folder in audited["flipped"].items():  # the suggestion is the photo's real class
        assert top[file] == {"cats": "cat", "dogs": "dog"}[true_folder]
    page = (audited["reports"]["dirty"] / "index.html").read_text()
    assert page.count("data:image/jpeg;base64,") >= 3 * 2 + 4  # each leak beside its source, each flip
    assert "Label ranking: the 20 likeliest label errors" in page  # the ranking's top rows, for a person
    assert page.count("<i>score: ") == 9 and "margin: how much more likely" in page  # what each score means
    links = re.findall(r'<a href="([^"]+)"', page)  # every thumbnail opens the full photo, relative to the page
    assert len(links) == page.count("data:image/jpeg;base64,") and not any(link.startswith("/") for link in links)
    page_dir = audited["reports"]["dirty"]
    assert all((page_dir / urllib.parse.unquote(html.unescape(link))).resolve().is_file() for link in links)


def test_a_clean_folder_gives_no_false_leak(audited):
    rows = findings(audited["reports"]["clean"], audited["folders"]["clean"])
    assert [r for r in rows if r["kind"] in ("leak", "conflict", "duplicate")] == []
    summary = audited["infos"]["clean"]["summary"]
    assert summary["test_photos_with_a_near_copy_in_train"] == 0
    assert summary["classes"]["train"] == {"counts": {"cat": 30, "dog": 30}, "imbalance": 1.0}


def test_exclude_removes_exactly_the_listed_files(audited, tmp_path):
    dirty = Path(next(iter(audited["flipped"]))).parents[2]
    rows = findings(audited["reports"]["dirty"], audited["folders"]["dirty"])
    listed = {r["file"] for r in rows if r["kind"] == "label_error"}
    assert listed
    before = load_run_splits(load_config(None, {"data.data_dir": str(dirty)}))
    cfg = load_config(None, {"data.data_dir": str(dirty), "data.exclude_kinds": ["label_error"],
                             "data.exclude": str(audited["reports"]["dirty"] / "findings.csv")})
    after = load_run_splits(cfg)
    every = lambda s: {p for p, _ in s.train + s.val + s.test}  # noqa: E731
    assert every(before) - every(after) == listed
    assert {e["file"] for e in after.excluded} == listed and {e["kind"] for e in after.excluded} == {"label_error"}
    moved = tmp_path / "elsewhere"  # the same photos on another machine's path: the report still applies
    shutil.copytree(dirty, moved)
    cfg = load_config(None, {"data.data_dir": str(moved), "data.exclude_kinds": ["label_error"],
                             "data.exclude": str(audited["reports"]["dirty"] / "findings.csv")})
    assert {Path(e["file"]).relative_to(moved) for e in load_run_splits(cfg).excluded} == \
        {Path(f).relative_to(dirty) for f in listed}
    with pytest.raises(ConfigError, match="cannot read the audit's findings"):
        load_run_splits(load_config(None, {"data.data_dir": str(dirty), "data.exclude": str(tmp_path / "none.csv")}))
    with pytest.raises(ConfigError, match="must be one of"):
        load_config(None, {"data.exclude_kinds": ["label_errors"]})


def test_one_photo_per_class_does_not_crash_the_k_fold_step(shared, tmp_path):
    probs, scored = out_of_fold_probabilities(np.eye(3, 8, dtype=np.float32), np.arange(3), 3)
    assert not scored.any()  # no class can be both trained on and held out: nothing is scored, nothing flagged
    flagged, _, _ = label_error_ranking(probs, np.arange(3), scored)
    assert not flagged.any()
    root = tmp_path / "one_each"
    for breed in ("Abyssinian", "Bengal", "american_bulldog"):
        (root / "train" / breed).mkdir(parents=True)
        photo = sorted((shared / "oxford-pets-37breeds-5shot" / "train" / breed).iterdir())[0]
        shutil.copyfile(photo, root / "train" / breed / photo.name)
    info = run_audit(str(root), "breeds", tmp_path / "report", tracking="none")
    assert info["summary"]["findings"]["label_error"] == 0
    assert info["summary"]["classes"]["train"]["imbalance"] == 1.0


@pytest.mark.slow
def test_a_run_and_its_card_report_a_test_photo_copied_from_train(tiny, tmp_path):
    """A tiny run on real photos where one test photo is a near-copy of a train photo: results.json counts it,
    promotion warns, and the card says so."""
    import json

    from petlab.engine.experiment import run_experiment
    from petlab.registry import Registry
    from petlab.registry.promote import promote
    from petlab.reports.runs import leaderboard, read_local_run
    from tests.dirty_data import near_copy

    data = tmp_path / "photos"
    shutil.copytree(tiny.data, data)
    source = sorted((data / "train" / "dogs").iterdir())[0]
    near_copy(source, data / "test" / "dogs" / "copy_of_a_train_dog.jpg", mirror=True, rng=random.Random(0))
    outcome = run_experiment(tiny.on(data).shrink({"train.epochs": 1, "tracking.backend": "none",
                                                   "data.leak_check": True}).config(output_dir=str(tmp_path / "runs")))
    found = outcome.results["test_near_copies_in_train"]
    assert found["count"] == 1 and found["pairs"][0]["train"] == str(source)
    assert found["pairs"][0]["test"].endswith("copy_of_a_train_dog.jpg")
    board = leaderboard([read_local_run(outcome.run_dir)])
    assert board.loc[0, "test_copies_in_train"] == 1  # the comparison report's column
    registry = tmp_path / "registry"
    promote("cats_vs_dogs", run=outcome.run_dir, registry=Registry(registry), force=True)
    card = json.loads((registry / "cats_vs_dogs" / "v1" / "card.json").read_text())
    assert card["test_near_copies_in_train"] == 1
    assert "Warning: 1 test photos have a near-copy in train" in card_text(registry)
