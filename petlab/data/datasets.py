"""Public pet datasets by name, each read in its own published layout.

Every reader returns the same thing (`Splits`): class names from the data, and for each split
a list of (path, label). Official splits are used as shipped; where a dataset ships no
validation split, one is carved from train (stratified, seeded) and test stays untouched,
because test must never take part in model selection.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from petlab.data.download import ARCHIVES, KAGGLE_HELP, download_dataset
from petlab.data.files import visible_dirs, visible_files
from petlab.errors import DatasetError, DownloadError
from petlab.names import SPECIES
from petlab.paths import data_root

log = logging.getLogger(__name__)
VAL_DIR_NAMES = ("val", "valid", "validation")
_SPECIES_ALIASES = {"cat": "cat", "cats": "cat", "dog": "dog", "dogs": "dog"}

Sample = tuple[str, int]


@dataclass
class Splits:
    dataset: str
    root: str
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # where each split came from
    classes_without_val: list[str] = field(default_factory=list)  # too few photos to give validation any
    sampled_from: dict[str, int] = field(default_factory=dict)  # split -> its size before --eval-sample
    excluded: list[dict] = field(default_factory=list)  # {split, file, kind}: left out by data.exclude (an audit)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def class_photos(self) -> dict[str, str]:
        """class -> a fingerprint of its photos (each one's name, size and first 4 KB): what a resumed run
        checks, since class folders renamed into each other keep the same class names."""
        digests = {name: hashlib.sha256() for name in self.classes}
        for path, label in sorted(self.train + self.val + self.test):
            try:
                with open(path, "rb") as fh:
                    head = fh.read(4096)
                size = os.path.getsize(path)
            except OSError:
                head, size = b"", -1
            digests[self.classes[label]].update(f"{Path(path).name}\0{size}\0".encode() + head)
        return {name: d.hexdigest()[:16] for name, d in digests.items()}


def pretty_class_name(folder: str) -> str:
    """'001.Affenpinscher' -> 'Affenpinscher', 'n02085620-Chihuahua' -> 'Chihuahua',
    'american_bulldog' -> 'American Bulldog'."""
    name = re.sub(r"^\d+\.", "", folder)
    name = re.sub(r"^n\d{8}-", "", name)
    name = name.replace("_", " ").strip()
    return " ".join(w[:1].upper() + w[1:] for w in name.split())


def check_class_names(classes: list[str], where: str) -> None:
    """Class names become file names (a promotion's example photos, reports): refuse any that could leave
    a folder or hide in a listing, whatever layout they came from (folders, a CSV's labels, a list file)."""
    for name in classes:
        bad = ("is empty" if not name.strip() else
               "is . or .." if name.strip() in (".", "..") else
               "holds a path separator" if "/" in name or "\\" in name else
               "holds a control character" if any(ord(c) < 32 or ord(c) == 127 for c in name) else
               "is over 200 characters" if len(name) > 200 else None)
        if bad:
            raise DatasetError(f"{where}: class name {name[:80]!r} {bad}; rename it (class names become file names)")


def normalise_class_name(name: str) -> str:
    """The key class names are matched by: case- and separator-insensitive."""
    return re.sub(r"[\s_\-.]+", "", pretty_class_name(name)).lower()


# ---------------------------------------------------------------- layout readers


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what} not found: {path}")
    return path


def _read_class_folders(split_dir: Path, task: str) -> dict[str, list[str]]:
    """{class name: [files]} for one ImageFolder split; every file counts (bad ones are skipped
    and counted later, never silently dropped here). Hidden entries are not data (is_hidden)."""
    folders = visible_dirs(split_dir)
    if not folders:
        raise DatasetError(f"no class folders in {split_dir}")
    classes: dict[str, list[str]] = {}
    for folder in folders:
        if task == "cats_vs_dogs":
            name = _SPECIES_ALIASES.get(folder.name.lower())
            if name is None:
                raise DatasetError(
                    f"{folder}: the cats_vs_dogs task needs class folders named cat(s) and dog(s)"
                )
        else:
            name = pretty_class_name(folder.name)
        files = [str(f) for f in visible_files(folder)]
        if not files:
            raise DatasetError(f"empty class folder: {folder}")
        classes.setdefault(name, []).extend(files)
    return classes


def _labelled(by_class: dict[str, list[str]], classes: list[str]) -> list[Sample]:
    index = {name: i for i, name in enumerate(classes)}
    return [(path, index[name]) for name, paths in by_class.items() for path in paths]


def _check_same_classes(reference: tuple[Path, list[str]], other: tuple[Path, list[str]]) -> None:
    (ref_dir, ref), (dir_, names) = reference, other
    if names != ref:
        only_ref, only_other = sorted(set(ref) - set(names)), sorted(set(names) - set(ref))
        raise DatasetError(
            f"class names differ between {ref_dir} and {dir_}: only in {ref_dir.name}: {only_ref}; "
            f"only in {dir_.name}: {only_other}"
        )


def read_split_folders(root: Path, task: str, train: str, val: str | None, test: str | None) -> dict:
    """Folders of class folders, one per split, that must agree on their classes."""
    dirs = {"train": _require_dir(root / train, "train split folder")}
    if val:
        dirs["val"] = _require_dir(root / val, "validation split folder")
    if test:
        dirs["test"] = _require_dir(root / test, "test split folder")
    by_split = {split: _read_class_folders(path, task) for split, path in dirs.items()}
    classes = sorted(by_split["train"])
    for split, found in by_split.items():
        _check_same_classes((dirs["train"], classes), (dirs[split], sorted(found)))
    return {"classes": classes, **{s: _labelled(found, classes) for s, found in by_split.items()}}


def read_imagefolder(root: Path, task: str, **_) -> dict:
    """train/ + one of val|valid|validation/ + optional test/. With only train and a held-out
    folder, that folder becomes test and validation is carved from train."""
    _require_dir(root / "train", f"ImageFolder layout needs a train/ folder; {root / 'train'}")
    val = next((n for n in VAL_DIR_NAMES if (root / n).is_dir()), None)
    has_test = (root / "test").is_dir()
    if val and not has_test:
        out = read_split_folders(root, task, "train", None, val)
        out["notes"] = {"test": f"shipped {val}/ split"}
        return out
    out = read_split_folders(root, task, "train", val, "test" if has_test else None)
    out["notes"] = {"val": f"official {val}/"} if val else {}
    return out


def read_kaggle_cat_and_dog(root: Path, task: str, **_) -> dict:
    """tongpython/cat-and-dog: training_set/ and test_set/, each possibly nested once more."""
    if task != "cats_vs_dogs":
        raise DatasetError("kaggle_cat_and_dog only serves the cats_vs_dogs task")

    def split_dir(name: str) -> str:
        nested = root / name / name
        return f"{name}/{name}" if nested.is_dir() else name

    out = read_split_folders(root, task, split_dir("training_set"), None, split_dir("test_set"))
    out["notes"] = {"test": "shipped test_set/"}
    return out


def _read_oxford_list(path: Path) -> list[tuple[str, int, int]]:
    rows = []
    for line_no, line in enumerate(_require_file(path).read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 4:
            raise DatasetError(f"{path}:{line_no}: expected '<image> <class id> <species> <breed id>'")
        rows.append((parts[0], int(parts[1]), int(parts[2])))
    return rows


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise DatasetError(f"file not found: {path}")
    return path


def read_oxford_iiit_pet(root: Path, task: str, species: str | None = None, **_) -> dict:
    """Official images/ + annotations/{trainval,test}.txt. Species (1 cat, 2 dog) serves
    cats_vs_dogs; the class id (1..37) serves breeds."""
    images = _require_dir(root / "images", "Oxford-IIIT Pet images/ folder")
    lists = {s: _read_oxford_list(root / "annotations" / f"{s}.txt") for s in ("trainval", "test")}
    if species:
        keep = SPECIES.index(species) + 1
        lists = {s: [r for r in rows if r[2] == keep] for s, rows in lists.items()}
    if task == "cats_vs_dogs":
        classes = list(SPECIES)
        labels = {s: [(name, sp - 1) for name, _, sp in rows] for s, rows in lists.items()}
    else:
        breed_of = {cid: name.rsplit("_", 1)[0] for rows in lists.values() for name, cid, _ in rows}
        ids = sorted(breed_of)
        classes = [pretty_class_name(breed_of[i]) for i in ids]
        index = {cid: i for i, cid in enumerate(ids)}
        labels = {s: [(name, index[cid]) for name, cid, _ in rows] for s, rows in lists.items()}
    if not labels["trainval"]:
        raise DatasetError(f"no images listed in {root / 'annotations' / 'trainval.txt'}")
    to_samples = {s: [(str(images / f"{n}.jpg"), y) for n, y in rows] for s, rows in labels.items()}
    return {"classes": classes, "train": to_samples["trainval"], "test": to_samples["test"],
            "notes": {"test": "official test.txt"}}


def read_stanford_dogs(root: Path, task: str, **_) -> dict:
    """Either the official Images/ + {train,test}_list.mat, or the same data as an ImageFolder."""
    if task != "breeds":
        raise DatasetError("stanford_dogs only serves the breeds task")
    if (root / "train").is_dir():
        return read_imagefolder(root, task)
    images = _require_dir(root / "Images", "Stanford Dogs Images/ folder (or an ImageFolder train/)")
    from scipy.io import loadmat

    def read_list(name: str) -> list[str]:
        path = next((p for p in (root / name, root / "lists" / name) if p.is_file()), None)
        if path is None:
            raise DatasetError(f"Stanford Dogs split list not found: {root / name}")
        # A MATLAB cell array (N x 1) of 1 x 1 cells holding the relative path.
        return [str(np.asarray(entry).ravel()[0]).strip() for entry in loadmat(path)["file_list"].ravel()]

    files = {"train": read_list("train_list.mat"), "test": read_list("test_list.mat")}
    folders = sorted({f.split("/")[0] for split in files.values() for f in split})
    classes = [pretty_class_name(f) for f in folders]
    index = {f: i for i, f in enumerate(folders)}
    out = {s: [(str(images / f), index[f.split("/")[0]]) for f in fs] for s, fs in files.items()}
    return {"classes": classes, **out, "notes": {"test": "official test_list.mat"}}


def read_dog_images(root: Path, task: str, **_) -> dict:
    """Udacity dogImages: train/ valid/ test/ with folders like 001.Affenpinscher."""
    if task != "breeds":
        raise DatasetError("dog_images only serves the breeds task")
    out = read_split_folders(root, task, "train", "valid", "test")
    out["notes"] = {"val": "official valid/"}
    return out


def read_cats_and_dogs_filtered(root: Path, task: str, **_) -> dict:
    if task != "cats_vs_dogs":
        raise DatasetError("cats_and_dogs_filtered only serves the cats_vs_dogs task")
    return read_imagefolder(root, task)


# Column names a labels CSV may use (case-insensitive): the first of each list present is taken.
CSV_FILE_COLUMNS = ("filename", "file", "path", "image", "image_id", "id", "fname")
CSV_LABEL_COLUMNS = ("label", "class", "breed", "species", "category")
CSV_SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def _csv_columns(path: Path, header: list[str]) -> tuple[str, str, str | None]:
    """(file column, label column, split column or None) of a labels CSV's header."""
    lower = {h.strip().lower(): h for h in header}
    file_col = next((lower[c] for c in CSV_FILE_COLUMNS if c in lower), None)
    label_col = next((lower[c] for c in CSV_LABEL_COLUMNS if c in lower), None)
    if (file_col is None or label_col is None) and len(header) == 2:
        file_col, label_col = header  # two unnamed columns: file, then label
    if file_col is None or label_col is None:
        raise DatasetError(f"{path}: cannot tell which column names the file and which the label (header: "
                           f"{', '.join(header)}); name them one of {', '.join(CSV_FILE_COLUMNS)} and one of "
                           f"{', '.join(CSV_LABEL_COLUMNS)}")
    return file_col, label_col, lower.get("split")


def read_labels_csv(path: Path, image_dir: Path, task: str) -> dict[str, dict[str, list[str]]]:
    """{split: {class name: [files]}} from a CSV of (file, label[, split]) rows, files relative to image_dir.
    A file may be named without its extension (Kaggle's `id`); every listed file must exist, once."""
    import csv

    _require_file(path)
    on_disk = {f.relative_to(image_dir).as_posix(): f for f in visible_files(image_dir)}
    by_stem: dict[str, list[Path]] = {}
    for rel, f in on_disk.items():
        by_stem.setdefault(rel.rsplit(".", 1)[0], []).append(f)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            file_col, label_col, split_col = _csv_columns(path, reader.fieldnames or [])
            rows = [(reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: not a readable CSV ({exc})") from None
    found: dict[str, dict[str, list[str]]] = {}
    seen: dict[str, str] = {}
    missing = []
    for line, row in rows:
        name, label = (row.get(file_col) or "").strip(), (row.get(label_col) or "").strip()
        if not name or not label:
            raise DatasetError(f"{path}:{line}: every row needs a file ({file_col}) and a label ({label_col})")
        if name.startswith("/") or ".." in Path(name).parts:
            raise DatasetError(f"{path}:{line}: {name!r} must be a path inside {image_dir}")
        candidates = [on_disk[name]] if name in on_disk else by_stem.get(name, [])
        if not candidates:
            missing.append(name)
            continue
        if len(candidates) > 1:
            raise DatasetError(f"{path}:{line}: {name!r} matches {len(candidates)} files in {image_dir}")
        if not candidates[0].resolve().is_relative_to(image_dir.resolve()):  # a symbolic link out of the folder
            raise DatasetError(f"{path}:{line}: {name!r} links outside {image_dir} (to {candidates[0].resolve()})")
        file = str(candidates[0])
        if file in seen:
            if seen[file] != label:
                raise DatasetError(f"{path}:{line}: {name!r} is listed twice, as {seen[file]!r} and {label!r}")
            continue
        seen[file] = label
        if task == "cats_vs_dogs":
            cls = _SPECIES_ALIASES.get(label.lower())
            if cls is None:
                raise DatasetError(f"{path}:{line}: the cats_vs_dogs task needs labels cat(s) or dog(s), "
                                   f"got {label!r}")
        else:
            cls = pretty_class_name(label)
        split = "train"
        if split_col is not None:
            split = CSV_SPLIT_NAMES.get((row.get(split_col) or "").strip().lower())
            if split is None:
                raise DatasetError(f"{path}:{line}: split must be one of {', '.join(CSV_SPLIT_NAMES)}, got "
                                   f"{row.get(split_col)!r}")
        found.setdefault(split, {}).setdefault(cls, []).append(file)
    if missing:
        raise DatasetError(f"{path}: {len(missing)} listed files are not in {image_dir} (first: "
                           f"{', '.join(missing[:3])})")
    if not found.get("train"):
        raise DatasetError(f"{path}: no training rows")
    return found


def labelled_splits(path: Path, image_dir: Path, task: str, seed: int, fraction: float, where: str) -> dict:
    """A labels CSV as splits. Without a split column, test is carved from the labelled photos (stratified,
    seeded, `fraction` of each class large enough), and validation later from what is left (load_splits)."""
    found = read_labels_csv(path, image_dir, task)
    classes = sorted(found["train"])
    for split, by_class in found.items():
        unseen = sorted(set(by_class) - set(classes))
        if unseen:
            raise DatasetError(f"{path}: {split} rows have classes no training row has: {', '.join(unseen[:5])}")
    out = {"classes": classes, **{s: _labelled(by_class, classes) for s, by_class in found.items()}, "notes": {}}
    if "test" not in out:
        out["train"], out["test"] = carve_validation(out["train"], fraction, seed)
        out["notes"]["test"] = f"carved {fraction:.0%} of {where}, stratified, seed {seed}"
    return out


def read_kaggle_dog_breed(root: Path, task: str, seed: int = 42, val_fraction: float = 0.2, **_) -> dict:
    """Kaggle's Dog Breed Identification: labels.csv (id,breed) naming train/<id>.jpg. Its test/ has no
    labels, so it is left alone: test and validation are carved, stratified, from the labelled photos."""
    if task != "breeds":
        raise DatasetError("kaggle_dog_breed only serves the breeds task")
    _require_dir(root / "train", "Dog Breed Identification train/ folder")
    out = labelled_splits(root / "labels.csv", root / "train", task, seed, val_fraction, "labels.csv")
    out["notes"]["test"] += " (the unlabelled test/ is not used)"
    return out


def read_csv_dataset(root: Path, task: str, seed: int = 42, val_fraction: float = 0.2,
                     labels_csv: str | None = None, **_) -> dict:
    """--labels-csv FILE: (file, label[, split]) rows, files relative to the CSV's folder."""
    if not labels_csv:
        raise DatasetError("dataset labels_csv needs --labels-csv FILE")
    path = Path(labels_csv).expanduser().resolve()
    return labelled_splits(path, path.parent, task, seed, val_fraction, path.name)


# name -> (reader, folder name under the data root)
DATASETS = {
    "cats_and_dogs_filtered": (read_cats_and_dogs_filtered, "cats_and_dogs_filtered"),
    "oxford_iiit_pet": (read_oxford_iiit_pet, "oxford-iiit-pet"),
    "stanford_dogs": (read_stanford_dogs, "stanford-dogs"),
    "dog_images": (read_dog_images, "dogImages"),
    "kaggle_cat_and_dog": (read_kaggle_cat_and_dog, "kaggle_cat_and_dog"),
    "kaggle_dog_breed": (read_kaggle_dog_breed, "dog-breed-identification"),
    "labels_csv": (read_csv_dataset, None),
    "imagefolder": (read_imagefolder, None),
}


def dataset_dir(dataset: str, data_dir: str | None = None, download: bool = True) -> Path:
    """--data-dir wins; else <data root>/<folder>, downloaded first when missing."""
    if data_dir:
        path = Path(data_dir).expanduser().resolve()
        if not path.is_dir():
            raise DatasetError(f"--data-dir does not exist or is not a folder: {path}")
        return path
    _, folder = DATASETS[dataset]
    if folder is None:
        raise DatasetError(f"dataset {dataset!r} has no default location: pass --data-dir")
    path = data_root() / folder
    if path.is_dir():
        return path
    if dataset not in ARCHIVES:
        help_ = KAGGLE_HELP.get(dataset, "put it there, or pass --data-dir")
        raise DatasetError(f"{dataset} not found at {path}. Kaggle needs a login, so petlab cannot fetch it: "
                           f"{help_.format(path=path)}")
    if not download:
        raise DatasetError(f"{dataset} not found at {path} (set PETLAB_DATA_DIR or pass --data-dir)")
    try:
        return download_dataset(dataset, path)
    except DownloadError as exc:  # offline, or the host is down: say where the files go instead
        raise DatasetError(f"{exc}. Without a network, download it elsewhere and unpack it so that {path} "
                           f"exists (or set PETLAB_DATA_DIR to the folder that holds {path.name}/, or pass "
                           "--data-dir)") from exc


def carve_validation(train: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Stratified, seeded validation from train. A class gives photos to validation only when it has
    enough to give one and keep one (at least 1/fraction photos); smaller classes stay whole in train,
    so a breed with a single photo is still learned. When every class has enough, this is exactly one
    stratified train_test_split over all of train."""
    counts = Counter(y for _, y in train)
    enough = {y for y, n in counts.items() if n >= 2 and math.floor(n * fraction) >= 1}
    if not enough:
        return sorted(train), []
    pool = [s for s in train if s[1] in enough]
    try:
        kept, val = train_test_split(pool, test_size=fraction, random_state=seed, stratify=[y for _, y in pool])
    except ValueError as exc:
        raise DatasetError(f"cannot carve a stratified {fraction:.0%} validation split: {exc}") from exc
    return sorted(kept + [s for s in train if s[1] not in enough]), sorted(val)


DEFAULT_DATASET = {"cats_vs_dogs": "cats_and_dogs_filtered", "breeds": "stanford_dogs"}


def detect_layout(root: Path) -> str:
    """--data-dir may point at any supported layout; recognise it by its folders."""
    if (root / "annotations" / "trainval.txt").is_file():
        return "oxford_iiit_pet"
    if (root / "Images").is_dir() and not (root / "train").is_dir():
        return "stanford_dogs"
    if (root / "training_set").is_dir():
        return "kaggle_cat_and_dog"
    if (root / "labels.csv").is_file() and (root / "train").is_dir():
        return "kaggle_dog_breed"
    if (root / "train").is_dir():
        return "imagefolder"
    raise DatasetError(f"{root}: not a recognised dataset layout (expected train/ with val|valid|validation/ "
                       "or test/, images/ + annotations/, Images/ + lists, training_set/ + test_set/, or "
                       "labels.csv + train/; any CSV of file,label rows: --labels-csv FILE)")


def resolve_dataset_name(dataset: str | None, task: str, data_dir: str | None, labels_csv: str | None = None) -> str:
    """A labels CSV (the most specific: it lists the very files); else an explicit name; else the layout under
    --data-dir; else the task's default dataset."""
    if labels_csv:
        return "labels_csv"
    if dataset and dataset != "imagefolder":
        return dataset
    if data_dir:
        return detect_layout(dataset_dir("imagefolder", data_dir))
    if dataset == "imagefolder":
        raise DatasetError("dataset 'imagefolder' has no default location: pass --data-dir")
    return DEFAULT_DATASET[task]


def dataset_root(dataset: str, data_dir: str | None, labels_csv: str | None, download: bool = True) -> Path:
    """The folder a resolved dataset's photos are under: the labels CSV's folder, or dataset_dir's."""
    if dataset == "labels_csv":
        return Path(labels_csv).expanduser().resolve().parent
    return dataset_dir(dataset, data_dir, download)


def load_splits(dataset: str | None, task: str, data_dir: str | None = None, species: str | None = None,
                val_fraction: float = 0.2, seed: int = 42, download: bool = True, carve: bool = True,
                labels_csv: str | None = None) -> Splits:
    """carve False: no validation is carved from train (cross-validated runs use every training photo).
    labels_csv: a CSV of (file, label) rows, files relative to it (dataset labels_csv)."""
    dataset = resolve_dataset_name(dataset, task, data_dir, labels_csv)
    reader, _ = DATASETS[dataset]
    if dataset == "labels_csv" and not labels_csv:
        raise DatasetError("dataset labels_csv needs --labels-csv FILE")
    root = dataset_root(dataset, data_dir, labels_csv, download)
    found = reader(root, task, species=species, seed=seed, val_fraction=val_fraction, labels_csv=labels_csv)
    classes = found["classes"]
    check_class_names(classes, labels_csv or str(root))
    notes = dict(found.get("notes", {}))
    train, val = found["train"], found.get("val") or []
    if not val and carve:
        train, val = carve_validation(train, val_fraction, seed)
        if not val:
            largest = max(Counter(y for _, y in train).values())
            raise DatasetError(
                f"{root}: no class has enough photos to carve a {val_fraction:.0%} validation split (a class needs "
                f"{math.ceil(1 / val_fraction)} to give one; the largest has {largest}); raise --val-fraction, add a "
                "val/ folder, or choose settings by cross-validation (train.cv_folds, as in "
                "experiments/configs/breeds_fewshot.yaml)")
        notes["val"] = f"carved {val_fraction:.0%} of train, stratified, seed {seed}"
    in_val = {y for _, y in val}
    without_val = [c for i, c in enumerate(classes) if i not in in_val] if val else []
    if without_val:
        notes["val"] = notes.get("val", "") + f"; {len(without_val)} classes too small to give validation photos"
        log.warning("%d of %d classes have too few photos for validation and train on all of them: %s",
                    len(without_val), len(classes), without_val[:20] + (["..."] if len(without_val) > 20 else []))
    return Splits(dataset, str(root), classes, train, val, found.get("test", []), notes, without_val)
