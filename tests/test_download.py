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


OFFLINE_RUN = """
import sys
from petlab.data import download
# the real download code, pointed at a file that is not there: what a user without a network meets
download.ARCHIVES["cats_and_dogs_filtered"] = [download.Archive(sys.argv[1], None)]
sys.path.insert(0, "experiments")
import run
sys.exit(run.main(["--arch", "custom_cnn", "--epochs", "1", "--output-dir", sys.argv[2]]))
"""


@pytest.mark.slow
def test_a_failed_download_is_one_error_line_naming_the_url_and_where_files_go(tmp_path):
    import os
    import subprocess
    import sys

    from tests.runs import REPO

    url = (tmp_path / "cats_and_dogs_filtered.zip").as_uri()
    env = {**os.environ, "PETLAB_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, "-c", OFFLINE_RUN, url, str(tmp_path / "runs")], capture_output=True,
                          text=True, cwd=REPO, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert f"could not download {url}" in errors[0]
    assert str(tmp_path / "data" / "cats_and_dogs_filtered") in errors[0] and "PETLAB_DATA_DIR" in errors[0]
