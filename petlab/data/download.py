"""Fetching datasets from their public URLs, so that a half-done download never looks done.

Archives land in <root>/.downloads (kept, so a retry skips what already arrived and checks
it), are verified against their published MD5 where one exists, are extracted into a
temporary folder beside the target, and only then renamed into place in one step.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from torchvision.datasets.utils import check_integrity, extract_archive

from petlab.data.files import is_hidden
from petlab.errors import DownloadError
from petlab.fileio import atomic_path
from petlab.progress import progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Archive:
    url: str
    md5: str | None  # None: the publisher gives no checksum; we log the SHA-256 we got instead


ARCHIVES: dict[str, list[Archive]] = {
    "cats_and_dogs_filtered": [
        Archive("https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip", None)
    ],
    "oxford_iiit_pet": [
        Archive("https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz", "5c4f3ee8e5d25df40f4fd59a7f44e54c"),
        Archive("https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz",
                "95a8c909bbe2e81eed6a22bccdf3f68f"),
    ],
    "stanford_dogs": [
        Archive("http://vision.stanford.edu/aditya86/ImageNetDogs/images.tar", "1bb1f2a596ae7057f99d7d75860002ef"),
        Archive("http://vision.stanford.edu/aditya86/ImageNetDogs/lists.tar", "edbb9f16854ec66506b5f09b583e0656"),
    ],
    "dog_images": [Archive("https://s3-us-west-1.amazonaws.com/udacity-aind/dog-project/dogImages.zip", None)],
}

# Kaggle needs a login, so petlab cannot fetch these: what to download, and what must exist after unzipping.
KAGGLE_HELP = {
    "kaggle_cat_and_dog": "download https://www.kaggle.com/datasets/tongpython/cat-and-dog (or `kaggle datasets "
                          "download -d tongpython/cat-and-dog`) and unzip it so that {path}/training_set and "
                          "{path}/test_set exist",
    "kaggle_dog_breed": "download https://www.kaggle.com/competitions/dog-breed-identification/data (or `kaggle "
                        "competitions download -c dog-breed-identification`) and unzip it so that "
                        "{path}/labels.csv and {path}/train exist",
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _stream(url: str, dest: Path, timeout: float = 60) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "petlab"})
    with urllib.request.urlopen(request, timeout=timeout) as response, dest.open("wb") as fh:
        total = int(response.headers.get("Content-Length") or 0) or None
        with progress(total=total, unit="B", unit_scale=True, desc=dest.name.removesuffix(".part")) as bar:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                fh.write(chunk)
                bar.update(len(chunk))


def fetch(archive: Archive, downloads: Path) -> Path:
    """Download with a progress bar; verify; a bad file is deleted so the next try starts clean."""
    filename = archive.url.rstrip("/").rsplit("/", 1)[-1]
    path = downloads / filename
    if path.is_file() and (archive.md5 is None or check_integrity(str(path), archive.md5)):
        log.info("already downloaded: %s", path)
        return path
    with atomic_path(path) as part:  # a failed or bad download leaves nothing behind
        try:
            _stream(archive.url, part)
        except Exception as exc:
            raise DownloadError(f"could not download {archive.url}: {exc}") from exc
        if archive.md5 is not None and not check_integrity(str(part), archive.md5):
            raise DownloadError(f"checksum mismatch for {archive.url} (expected MD5 {archive.md5}); deleted it")
        if archive.md5 is None:
            log.warning("%s has no published checksum; SHA-256 of what arrived: %s", filename, _sha256(part))
    return path


def download_dataset(name: str, target: Path, archives: list[Archive] | None = None) -> Path:
    """Fetch and unpack `name` into `target`, atomically: `target` appears complete or not at all."""
    archives = archives if archives is not None else ARCHIVES[name]
    target.parent.mkdir(parents=True, exist_ok=True)
    downloads = target.parent / ".downloads"
    downloads.mkdir(exist_ok=True)
    log.info("downloading %s into %s", name, target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for archive in archives:
            extract_archive(str(fetch(archive, downloads)), str(staging))
        entries = [e for e in staging.iterdir() if not is_hidden(e.name)]  # a macOS zip adds __MACOSX/
        # Many archives wrap everything in one top folder (cats_and_dogs_filtered/, dogImages/).
        content = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
        content.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
