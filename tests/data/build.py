"""`make test-data`: the real test photos, rebuilt from the public datasets they were taken from.

tests/data/manifest.csv names every file of the four test sets (tests/data/README.md): the set, its path
there, the public archive (URL) and the member it comes from, and its MD5. This fetches each archive once
with petlab's own downloader (petlab/data/download.py: resumable, checked against the publisher's MD5),
streams the named members out of it (each read a block at a time, refused once past the size the manifest
gives), checks each file's MD5, and moves each set into place only once all of it is there and right. So an
archive left in `.downloads/` (where the publisher gives no MD5 for it, the downloader keeps it unchecked)
can add nothing: every byte taken from it is checked against the manifest. A `lines` row is a list file cut
down to the set: the member's lines that name one of the set's photos, in the member's order, its comment
lines dropped.

    python -m tests.data.build --out ../shared/data           # what `make test-data` runs
    python -m tests.data.build --write-manifest ../shared/data  # a maintainer, after a set changed
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import shutil
import sys
import tarfile
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from petlab.data.download import ARCHIVES, Archive, fetch
from petlab.errors import DownloadError
from petlab.progress import progress

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.csv"
README = HERE / "README.md"
COLUMNS = ["set", "path", "archive", "member", "kind", "md5", "size"]
# A `lines` row's member is a whole list file, larger than the set's cut of it: read up to this much.
LIST_MEMBER_BYTES = 16 * 2**20
MEMBER_BYTES = 64 * 2**20  # a row without a recorded size (an older manifest) reads at most this much

CATS_AND_DOGS, OXFORD_IMAGES, OXFORD_ANNOTATIONS = (ARCHIVES["cats_and_dogs_filtered"][0].url,
                                                    *(a.url for a in ARCHIVES["oxford_iiit_pet"]))
STANFORD_IMAGES = ARCHIVES["stanford_dogs"][0].url
# Stanford Dogs files each breed under its ImageNet synset; the test set names the folder by the breed.
STANFORD_SYNSETS = {"Beagle": "n02088364-beagle", "Siberian Husky": "n02110185-Siberian_husky",
                    "Toy Poodle": "n02113624-toy_poodle"}


@dataclass(frozen=True)
class Row:
    set: str
    path: str  # inside the set's folder
    archive: str  # the public archive's URL (petlab/data/download.py ARCHIVES has its MD5)
    member: str  # inside the archive
    kind: str  # "file": the member as it is; "lines": the member's lines that name the set's photos
    md5: str
    size: int | None = None  # the file's size in bytes: a "file" member larger than this is refused unread

    def __post_init__(self):
        if isinstance(self.size, str):
            object.__setattr__(self, "size", int(self.size) if self.size else None)

    def member_limit(self) -> int:
        """The most bytes of this row's member read before it is refused."""
        return LIST_MEMBER_BYTES if self.kind == "lines" else self.size if self.size is not None else MEMBER_BYTES


def md5_of(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def read_manifest(path: Path = MANIFEST) -> list[Row]:
    with path.open(newline="") as fh:
        return [Row(**row) for row in csv.DictReader(fh)]


def public_archives() -> dict[str, Archive]:
    return {archive.url: archive for archives in ARCHIVES.values() for archive in archives}


def members(archive_file: Path, limits: dict[str, int]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each wanted member (name -> the most bytes it may have), in one streaming pass (a
    755 MB tar.gz is read once). A member is read a block at a time and refused once past its limit, so a
    small archive holding a huge member (1.5 GB in a 1.6 MB zip once peaked at 3.9 GB) costs its limit."""
    if zipfile.is_zipfile(archive_file):
        with zipfile.ZipFile(archive_file) as zf:
            for name in sorted(set(limits) & set(zf.namelist())):
                with zf.open(name) as stream:
                    yield name, bounded_read(stream, limits[name], f"{archive_file.name}:{name}")
        return
    with tarfile.open(archive_file, "r|*") as tf:
        for info in tf:
            name = info.name.lstrip("./")
            if info.isfile() and name in limits:
                yield name, bounded_read(tf.extractfile(info), limits[name], f"{archive_file.name}:{name}")


def bounded_read(stream, limit: int, what: str) -> bytes:
    """All of `stream`, or DownloadError as soon as it passes `limit` bytes."""
    chunks, total = [], 0
    while block := stream.read(1 << 20):
        total += len(block)
        if total > limit:
            raise DownloadError(f"{what} is over {limit} bytes, the size the manifest gives: not the published file")
        chunks.append(block)
    return b"".join(chunks)


def set_lines(text: bytes, photos: set[str]) -> bytes:
    """A list file (`<image> <class> <species> <breed>` lines) cut down to the set's photos."""
    kept = [line for line in text.decode().splitlines()
            if line and not line.startswith("#") and line.split()[0] in photos]
    return ("\n".join(kept) + "\n").encode()


def build(out: Path, rows: list[Row] | None = None, archives: dict[str, Archive] | None = None,
          downloads: Path | None = None) -> list[str]:
    """Write each set of `rows` under `out` (a set already there and matching is kept); the sets written.
    `archives` maps a manifest URL to where it is fetched from (a local copy in the tests)."""
    rows = read_manifest() if rows is None else rows
    archives = {**public_archives(), **(archives or {})}
    missing = {row.archive for row in rows} - set(archives)
    if missing:
        raise DownloadError(f"the manifest names archives petlab does not know: {sorted(missing)}")
    out.mkdir(parents=True, exist_ok=True)
    downloads = downloads or out / ".downloads"
    downloads.mkdir(exist_ok=True)
    by_set = defaultdict(list)
    for row in rows:
        by_set[row.set].append(row)
    todo = [name for name, set_rows in by_set.items() if not already_built(out / name, set_rows)]
    if not todo:
        return []
    differing = [name for name in todo if (out / name).exists()]
    if differing:  # said before any archive is fetched, and a user's folder is never overwritten
        raise DownloadError(f"{out / differing[0]} exists but differs from the manifest: move it away and rerun")
    staging = Path(tempfile.mkdtemp(prefix=".test-data-", dir=out))
    try:
        wanted = [row for row in rows if row.set in todo]
        by_archive = defaultdict(list)
        for row in wanted:
            by_archive[row.archive].append(row)
        photos = defaultdict(set)  # each set's photo names, which its list files are cut down to
        for row in wanted:
            photos[row.set].add(Path(row.path).stem)
        with progress(total=len(wanted), desc="test photos", unit="file") as bar:
            for url, archive_rows in by_archive.items():
                extract(fetch(archives[url], downloads), archive_rows, photos, staging, bar)
        for name in todo:
            (staging / name).rename(out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if README.is_file():
        shutil.copyfile(README, out / "README.md")
    return todo


def extract(archive_file: Path, rows: list[Row], photos: dict[str, set[str]], staging: Path, bar) -> None:
    """Each row's file from the archive into staging/<set>/<path>, checked against its MD5."""
    rows_of = defaultdict(list)
    for row in rows:
        rows_of[row.member].append(row)
    found = set()
    limits = {member: max(row.member_limit() for row in member_rows) for member, member_rows in rows_of.items()}
    for name, data in members(archive_file, limits):
        found.add(name)
        for row in rows_of[name]:
            content = set_lines(data, photos[row.set]) if row.kind == "lines" else data
            if md5_of(content) != row.md5:
                raise DownloadError(f"{row.set}/{row.path} from {archive_file.name}:{name} has MD5 "
                                    f"{md5_of(content)}, the manifest says {row.md5}")
            target = staging / row.set / row.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            bar.update(1)
    absent = sorted(set(rows_of) - found)
    if absent:
        raise DownloadError(f"{archive_file.name} has no {absent[0]} (and {len(absent) - 1} more the manifest "
                            "names): is it the published archive?")


def already_built(folder: Path, rows: list[Row]) -> bool:
    return folder.is_dir() and all((folder / row.path).is_file() and
                                   md5_of((folder / row.path).read_bytes()) == row.md5 for row in rows)


def manifest_rows(shared: Path) -> list[Row]:
    """Where each file of the shared sets comes from (a maintainer's step: the four layouts, by name)."""
    rows = []

    def add(set_name: str, path: Path, archive: str, member: str, kind: str = "file"):
        rel = path.relative_to(shared / set_name).as_posix()
        data = path.read_bytes()
        rows.append(Row(set_name, rel, archive, member, kind, md5_of(data), len(data)))

    for path in sorted((shared / "cats_and_dogs_filtered").rglob("*.jpg")):
        add("cats_and_dogs_filtered", path, CATS_AND_DOGS,
            f"cats_and_dogs_filtered/{path.relative_to(shared / 'cats_and_dogs_filtered').as_posix()}")
    oxford = shared / "oxford-iiit-pet-3breeds"
    for path in sorted((oxford / "images").iterdir()):
        add(oxford.name, path, OXFORD_IMAGES, f"images/{path.name}")
    for path in sorted((oxford / "annotations").rglob("*")):
        if path.is_file():
            member = f"annotations/{path.relative_to(oxford / 'annotations').as_posix()}"
            add(oxford.name, path, OXFORD_ANNOTATIONS, member, "lines" if path.suffix == ".txt" else "file")
    for path in sorted((shared / "stanford-dogs-3breeds").rglob("*.jpg")):
        add("stanford-dogs-3breeds", path, STANFORD_IMAGES, f"Images/{STANFORD_SYNSETS[path.parent.name]}/{path.name}")
    for path in sorted((shared / "oxford-pets-37breeds-5shot").rglob("*.jpg")):
        add("oxford-pets-37breeds-5shot", path, OXFORD_IMAGES, f"images/{path.name}")
    return rows


def write_manifest(rows: list[Row], path: Path = MANIFEST) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows([getattr(row, c) for c in COLUMNS] for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="where the sets go (../shared/data, or $PETLAB_DATA_DIR)")
    parser.add_argument("--write-manifest", type=Path, metavar="DIR",
                        help="rewrite tests/data/manifest.csv from the sets in DIR")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.write_manifest:
        rows = manifest_rows(args.write_manifest)
        write_manifest(rows)
        print(f"{MANIFEST}: {len(rows)} files")
        return 0
    if args.out is None:
        parser.error("--out DIR is required")
    try:
        written = build(args.out)
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out}: " + (f"built {', '.join(written)}" if written else "every set already there"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
