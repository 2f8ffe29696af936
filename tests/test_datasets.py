"""Each public layout is read as published; split rules and layout errors are exact."""

from collections import Counter

import numpy as np
import pytest
from scipy.io import savemat

from petlab.data.datasets import DatasetError, carve_validation, load_splits, pretty_class_name
from tests.imaging import make_imagefolder, save_photo


def labels_of(samples):
    return Counter(label for _, label in samples)


def test_imagefolder_with_three_splits_uses_them_as_shipped(tmp_path):
    make_imagefolder(tmp_path, {"train": 6, "val": 2, "test": 3})
    s = load_splits(None, "cats_vs_dogs", str(tmp_path))
    assert s.dataset == "imagefolder" and s.classes == ["cat", "dog"]
    assert s.sizes() == {"train": 12, "val": 4, "test": 6}


@pytest.mark.parametrize("val_name", ["val", "valid", "validation"])
def test_two_split_imagefolder_carves_val_and_keeps_heldout_as_test(tmp_path, val_name):
    make_imagefolder(tmp_path, {"train": 10, val_name: 4})
    s = load_splits(None, "cats_vs_dogs", str(tmp_path), val_fraction=0.2, seed=3)
    assert s.sizes() == {"train": 16, "val": 4, "test": 8}
    assert all(f"/{val_name}/" in path for path, _ in s.test)
    assert labels_of(s.val) == {0: 2, 1: 2}  # stratified
    assert not {p for p, _ in s.val} & {p for p, _ in s.train}
    again = load_splits(None, "cats_vs_dogs", str(tmp_path), val_fraction=0.2, seed=3)
    assert again.val == s.val  # seeded
    other = load_splits(None, "cats_vs_dogs", str(tmp_path), val_fraction=0.2, seed=4)
    assert other.val != s.val


def test_carve_validation_is_stratified_on_unbalanced_classes():
    train = [(f"a{i}", 0) for i in range(80)] + [(f"b{i}", 1) for i in range(20)]
    kept, val = carve_validation(train, 0.25, seed=0)
    assert labels_of(val) == {0: 20, 1: 5} and len(kept) == 75


def test_class_name_mismatch_between_splits_names_both_paths(tmp_path):
    make_imagefolder(tmp_path, {"train": 2}, classes=("Beagle", "Pug"))
    make_imagefolder(tmp_path, {"val": 2}, classes=("Beagle", "Boxer"))
    with pytest.raises(DatasetError) as info:
        load_splits(None, "breeds", str(tmp_path))
    msg = str(info.value)
    assert str(tmp_path / "train") in msg and str(tmp_path / "val") in msg and "Boxer" in msg and "Pug" in msg


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    make_imagefolder(tmp_path, {"train": 3, "val": 1})
    (tmp_path / "train" / "hamsters").mkdir()
    with pytest.raises(DatasetError, match=str(tmp_path / "train" / "hamsters")):
        load_splits(None, "breeds", str(tmp_path))


def test_missing_directory_is_an_error_naming_it(tmp_path):
    with pytest.raises(DatasetError, match=str(tmp_path / "nowhere")):
        load_splits(None, "cats_vs_dogs", str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a recognised dataset layout"):
        load_splits(None, "cats_vs_dogs", str(tmp_path / "empty"))


def test_missing_default_dataset_without_network_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("PETLAB_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetError, match=str(tmp_path / "cats_and_dogs_filtered")):
        load_splits(None, "cats_vs_dogs", download=False)
    with pytest.raises(DatasetError, match="Kaggle needs a login"):
        load_splits("kaggle_cat_and_dog", "cats_vs_dogs")


def test_cats_vs_dogs_needs_cat_and_dog_folders(tmp_path):
    make_imagefolder(tmp_path, {"train": 2, "val": 2}, classes=("Beagle", "Pug"))
    with pytest.raises(DatasetError, match="cat"):
        load_splits(None, "cats_vs_dogs", str(tmp_path))


def test_dog_images_folder_names_are_shown_clean(tmp_path):
    make_imagefolder(tmp_path, {"train": 2, "valid": 1, "test": 1},
                     classes=("001.Affenpinscher", "002.Afghan_hound"))
    s = load_splits("dog_images", "breeds", str(tmp_path))
    assert s.classes == ["Affenpinscher", "Afghan Hound"]
    assert s.sizes() == {"train": 4, "val": 2, "test": 2}
    assert pretty_class_name("n02085620-Chihuahua") == "Chihuahua"


def write_oxford(root, rows_by_split):
    for split, rows in rows_by_split.items():
        lines = ["#Image CLASS-ID SPECIES BREED ID"] + [f"{n} {c} {s} {b}" for n, c, s, b in rows]
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
        for i, (name, _, species, _) in enumerate(rows):
            save_photo(root / "images" / f"{name}.jpg", species - 1, hash(name) % 1000 + i)


def test_oxford_lists_serve_species_breeds_and_dog_only(tmp_path):
    def rows(start):
        return ([(f"Abyssinian_{i}", 1, 1, 1) for i in range(start, start + 5)]
                + [(f"american_bulldog_{i}", 2, 2, 1) for i in range(start, start + 5)]
                + [(f"beagle_{i}", 3, 2, 2) for i in range(start, start + 5)])

    write_oxford(tmp_path, {"trainval": rows(0), "test": rows(100)})
    save_photo(tmp_path / "images" / "stray_1.jpg", 0, 1)  # in no list: ignored, as officially
    species = load_splits(None, "cats_vs_dogs", str(tmp_path), val_fraction=0.2)
    assert species.dataset == "oxford_iiit_pet" and species.classes == ["cat", "dog"]
    assert species.sizes() == {"train": 12, "val": 3, "test": 15}
    breeds = load_splits("oxford_iiit_pet", "breeds", str(tmp_path))
    assert breeds.classes == ["Abyssinian", "American Bulldog", "Beagle"]
    dogs = load_splits("oxford_iiit_pet", "breeds", str(tmp_path), species="dog")
    assert dogs.classes == ["American Bulldog", "Beagle"] and len(dogs.test) == 10


def test_stanford_official_layout_with_mat_lists(tmp_path):
    folders = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel"]
    split_files = {"train": [], "test": []}
    for f_i, folder in enumerate(folders):
        for i in range(6):
            rel = f"{folder}/{folder.split('-')[0]}_{i}.jpg"
            save_photo(tmp_path / "Images" / rel, f_i, f_i * 10 + i)
            split_files["train" if i < 4 else "test"].append(rel)
    (tmp_path / "lists").mkdir()
    for split, files in split_files.items():
        cell = np.empty((len(files), 1), dtype=object)  # a MATLAB cell array, as published
        for i, f in enumerate(files):
            cell[i, 0] = np.array([f])
        savemat(tmp_path / "lists" / f"{split}_list.mat", {"file_list": cell, "labels": [[1]] * len(files)})
    s = load_splits(None, "breeds", str(tmp_path), val_fraction=0.25)
    assert s.dataset == "stanford_dogs" and s.classes == ["Chihuahua", "Japanese Spaniel"]
    assert s.sizes() == {"train": 6, "val": 2, "test": 4}


def test_kaggle_nested_layout(tmp_path):
    make_imagefolder(tmp_path / "training_set", {"training_set": 5})
    make_imagefolder(tmp_path / "test_set", {"test_set": 2})
    s = load_splits(None, "cats_vs_dogs", str(tmp_path), val_fraction=0.2)
    assert s.dataset == "kaggle_cat_and_dog" and s.sizes() == {"train": 8, "val": 2, "test": 4}


def test_wrong_task_for_dataset_is_refused(tmp_path):
    make_imagefolder(tmp_path, {"train": 2, "validation": 2})
    with pytest.raises(DatasetError, match="only serves the cats_vs_dogs task"):
        load_splits("cats_and_dogs_filtered", "breeds", str(tmp_path))


# ---------------------------------------------------------------- the shared real photos


def test_shared_cats_and_dogs_filtered(shared):
    s = load_splits(None, "cats_vs_dogs", str(shared / "cats_and_dogs_filtered"))
    assert s.sizes() == {"train": 1600, "val": 400, "test": 1000}
    assert labels_of(s.test) == {0: 500, 1: 500} and labels_of(s.val) == {0: 200, 1: 200}


def test_shared_cats_and_dogs_filtered_by_name_under_the_data_root(shared, monkeypatch):
    monkeypatch.setenv("PETLAB_DATA_DIR", str(shared))
    s = load_splits(None, "cats_vs_dogs")
    assert s.dataset == "cats_and_dogs_filtered" and s.sizes()["test"] == 1000


def test_shared_oxford_three_breeds(shared):
    s = load_splits("oxford_iiit_pet", "breeds", str(shared / "oxford-iiit-pet-3breeds"))
    assert s.classes == ["Abyssinian", "American Bulldog", "Bengal"]
    assert len(s.train) + len(s.val) == 300 and len(s.test) == 298


def test_shared_stanford_three_breeds(shared):
    s = load_splits("stanford_dogs", "breeds", str(shared / "stanford-dogs-3breeds"))
    assert s.classes == ["Beagle", "Siberian Husky", "Toy Poodle"]
    assert s.sizes() == {"train": 377, "val": 80, "test": 81}


# ---------------------------------------------------------------- CSV-labelled datasets

def kaggle_dog_breed_copy(shared, root):
    """Kaggle's Dog Breed Identification layout built from the shared 37 breeds (train and test photos alike):
    train/<hex id>.jpg named by labels.csv (id,breed, breeds in Kaggle's lower_case style), an unlabelled test/."""
    import hashlib
    import shutil

    source = shared / "oxford-pets-37breeds-5shot"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    rows = ["id,breed"]
    for photo in sorted(source.glob("*/*/*.jpg")):
        photo_id = hashlib.md5(photo.name.encode()).hexdigest()
        shutil.copy(photo, root / "train" / f"{photo_id}.jpg")
        rows.append(f"{photo_id},{photo.parent.name.lower()}")
    for photo in sorted(source.glob("test/pug/*.jpg"))[:3]:  # Kaggle's test/ has no labels: never used
        shutil.copy(photo, root / "test" / f"unlabelled-{photo.name}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (root / "sample_submission.csv").write_text("id,affenpinscher\n")
    return root


def test_kaggle_dog_breed_layout_is_recognised_and_carves_test_then_val(shared, tmp_path):
    root = kaggle_dog_breed_copy(shared, tmp_path / "dog-breed-identification")
    s = load_splits(None, "breeds", str(root), val_fraction=0.2, seed=7)
    assert s.dataset == "kaggle_dog_breed" and len(s.classes) == 37
    assert "American Bulldog" in s.classes and "Abyssinian" in s.classes  # pretty names, as the folder readers give
    # 10 labelled photos a breed: 2 to test, then 20% of the other 296 (60) to validation, stratified and seeded
    assert labels_of(s.test) == {i: 2 for i in range(37)} and set(labels_of(s.val).values()) == {1, 2}
    assert s.sizes() == {"train": 236, "val": 60, "test": 74}
    everything = [p for p, _ in s.train + s.val + s.test]
    assert len(set(everything)) == 370 and all("/train/" in p for p in everything)  # the unlabelled test/ is not used
    assert "unlabelled test/ is not used" in s.notes["test"] and "carved" in s.notes["val"]
    again = load_splits(None, "breeds", str(root), val_fraction=0.2, seed=7)
    assert again.test == s.test and again.val == s.val


def test_labels_csv_reads_any_folder_with_a_split_column_or_without(shared, tmp_path):
    """A second CSV layout: `image,class,split` at the root, photos in nested folders, paths relative to the CSV."""
    import shutil

    source = shared / "cats_and_dogs_filtered" / "validation"
    root = tmp_path / "photos"
    rows = ["image,class,split"]
    for i, photo in enumerate(sorted(source.glob("*/*.jpg"))[::25]):  # 40 photos: 20 cats, 20 dogs
        folder = root / "shoot" / f"day{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, folder / photo.name)
        split = ("train", "train", "train", "valid", "test")[i % 5]
        rows.append(f"shoot/day{i % 3}/{photo.name},{photo.parent.name},{split}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    s = load_splits(None, "cats_vs_dogs", labels_csv=str(root / "labels.csv"))
    assert s.dataset == "labels_csv" and s.classes == ["cat", "dog"]
    assert s.sizes() == {"train": 24, "val": 8, "test": 8}
    # without the split column: test carved, then val, both stratified
    (root / "plain.csv").write_text("\n".join(",".join(r.split(",")[:2]) for r in rows) + "\n")
    plain = load_splits(None, "cats_vs_dogs", labels_csv=str(root / "plain.csv"), val_fraction=0.25, seed=1)
    assert plain.sizes() == {"train": 22, "val": 8, "test": 10}
    assert labels_of(plain.test) == {0: 5, 1: 5}


@pytest.mark.parametrize("csv, error", [
    ("file,label\nmissing.jpg,cat\n", "1 listed files are not in"),
    ("file,label\na.jpg,cat\na.jpg,dog\n", "listed twice, as 'cat' and 'dog'"),
    ("file,label\na.jpg,horse\n", "needs labels cat(s) or dog(s), got 'horse'"),
    ("name,kind,extra\na.jpg,cat,x\n", "cannot tell which column names the file"),
    ("file,label\na.jpg,\n", ":2: every row needs a file"),
    ("file,label\n../a.jpg,cat\n", "must be a path inside"),
    ("file,label,split\na.jpg,cat,holdout\n", "split must be one of"),
])
def test_a_bad_labels_csv_is_an_error_naming_the_line(tmp_path, csv, error):
    save_photo(tmp_path / "a.jpg", 0, seed=0)
    (tmp_path / "labels.csv").write_text(csv)
    with pytest.raises(DatasetError, match=error.replace("(", r"\(").replace(")", r"\)")):
        load_splits(None, "cats_vs_dogs", labels_csv=str(tmp_path / "labels.csv"))


@pytest.mark.slow
def test_a_kaggle_layout_and_a_labels_csv_train_and_evaluate(shared, tmp_path):
    """The Kaggle copy of the 37 breeds trains (Lite0 features) and evaluates on its carved test split; a plain
    CSV of cats and dogs does too through --labels-csv."""
    import json

    from tests.runs import REPO, only_run_dir, script

    root = kaggle_dog_breed_copy(shared, tmp_path / "dog-breed-identification")
    script("run.py", "--config", REPO / "experiments/configs/lite0_features_breeds.yaml", "--data-dir", root,
           "--epochs", "5", "--tracking", "none", "--output-dir", tmp_path / "runs")
    run_dir = only_run_dir(tmp_path / "runs")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["dataset"] == "kaggle_dog_breed" and results["split_sizes"] == {"train": 236, "val": 60, "test": 74}
    assert results["test"]["accuracy"] > 0.6  # 37 breeds from ~6 photos each, 5 epochs of the head
    evaluated = json.loads(script("evaluate.py", run_dir, "--data-dir", root).stdout)
    assert evaluated["n"] == 74 and evaluated["accuracy"] == pytest.approx(results["test"]["accuracy"], abs=1 / 74)

    photos = tmp_path / "cats-and-dogs"
    rows = ["path,label"]
    for split in ("train", "validation"):
        for i, photo in enumerate(sorted((shared / "cats_and_dogs_filtered" / split).glob("*/*.jpg"))[::10]):
            target = photos / "all" / f"{split}-{i:04d}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(photo.read_bytes())
            rows.append(f"all/{target.name},{photo.parent.name}")
    (photos / "labels.csv").write_text("\n".join(rows) + "\n")  # 300 photos: 150 cats, 150 dogs
    script("run.py", "--config", REPO / "experiments/configs/lite0_features_cats_vs_dogs.yaml", "--labels-csv",
           photos / "labels.csv", "--epochs", "3", "--tracking", "none", "--output-dir", tmp_path / "csv-runs")
    results = json.loads((only_run_dir(tmp_path / "csv-runs") / "results.json").read_text())
    assert results["dataset"] == "labels_csv" and results["split_sizes"] == {"train": 192, "val": 48, "test": 60}
    assert results["test"]["accuracy"] > 0.9
    evaluated = json.loads(script("evaluate.py", only_run_dir(tmp_path / "csv-runs"), "--labels-csv",
                                  photos / "labels.csv").stdout)
    assert evaluated["dataset"] == "labels_csv" and evaluated["n"] == 60


@pytest.mark.parametrize("label, error", [
    ("../../LABELPWN", "holds a path separator"),
    ("a\\b", "holds a path separator"),
    ("..", "is . or .."),
    ("bad\x1bname", "holds a control character"),
])
def test_a_class_name_that_could_leave_a_folder_is_refused(tmp_path, label, error):
    """A --labels-csv label once became a class name, and promotion copied example photos under it: a label
    of ../../x wrote LABELPWN-1.jpg two folders above the registry. Folders and list files go the same way."""
    for i in range(6):
        save_photo(tmp_path / f"a{i}.jpg", i % 2, seed=i)
    rows = [f"a{i}.jpg,{'Beagle' if i % 2 else label}" for i in range(6)]
    (tmp_path / "labels.csv").write_text("file,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=error):
        load_splits(None, "breeds", labels_csv=str(tmp_path / "labels.csv"))


def test_a_csv_file_that_links_outside_its_folder_is_refused(tmp_path):
    """The path check once read the text only, so passwd.jpg -> /etc/passwd became a training file."""
    save_photo(tmp_path / "a.jpg", 0, seed=0)
    (tmp_path / "passwd.jpg").symlink_to("/etc/passwd")
    (tmp_path / "labels.csv").write_text("file,label\na.jpg,cat\npasswd.jpg,dog\n")
    with pytest.raises(DatasetError, match="links outside"):
        load_splits(None, "cats_vs_dogs", labels_csv=str(tmp_path / "labels.csv"))
