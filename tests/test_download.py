"""Downloads: checksum, extraction into a temp folder, atomic rename; failures leave nothing."""

import hashlib
import zipfile

import pytest

from petlab.data.datasets import load_splits
from petlab.data.download import Archive, DownloadError, download_dataset
from tests.imaging import make_imagefolder


def zip_dataset(tmp_path, top="cats_and_dogs_filtered"):
    src = make_imagefolder(tmp_path / "src" / top, {"train": 5, "validation": 2})
    archive = tmp_path / "served" / f"{top}.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(src.rglob("*.jpg")):
            zf.write(f, f.relative_to(src.parent))
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def leftovers(root):
    return sorted(p.name for p in root.iterdir() if p.name != ".downloads")


def test_download_checks_md5_and_unpacks_atomically(tmp_path):
    archive, md5 = zip_dataset(tmp_path)
    target = tmp_path / "data" / "cats_and_dogs_filtered"
    download_dataset("cats_and_dogs_filtered", target, [Archive(archive.as_uri(), md5)])
    assert (target / "train" / "cats").is_dir() and (target / "validation" / "dogs").is_dir()
    assert leftovers(target.parent) == ["cats_and_dogs_filtered"]  # no staging folder left
    s = load_splits("cats_and_dogs_filtered", "cats_vs_dogs", str(target))
    assert s.sizes() == {"train": 8, "val": 2, "test": 4}


def test_checksum_mismatch_leaves_nothing(tmp_path):
    archive, _ = zip_dataset(tmp_path)
    target = tmp_path / "data" / "cats_and_dogs_filtered"
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_dataset("cats_and_dogs_filtered", target, [Archive(archive.as_uri(), "0" * 32)])
    assert leftovers(target.parent) == []
    assert list((target.parent / ".downloads").iterdir()) == []


def test_broken_archive_mid_extraction_leaves_nothing(tmp_path):
    archive, _ = zip_dataset(tmp_path)
    broken = archive.with_name("broken.zip")
    broken.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    target = tmp_path / "data" / "cats_and_dogs_filtered"
    with pytest.raises(Exception):  # noqa: B017  (zipfile's own error type)
        download_dataset("cats_and_dogs_filtered", target, [Archive(broken.as_uri(), None)])
    assert leftovers(target.parent) == []


def test_unreachable_url_is_a_clear_error(tmp_path):
    target = tmp_path / "data" / "x"
    with pytest.raises(DownloadError, match="could not download"):
        download_dataset("x", target, [Archive((tmp_path / "missing.zip").as_uri(), None)])
    assert leftovers(target.parent) == []
