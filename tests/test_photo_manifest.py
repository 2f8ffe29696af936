"""`make test-data` (tests/data/build.py): the real test photos rebuilt from public archives by petlab's own
downloader, here from local archives laid out as the published ones (there is no network)."""

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from petlab.data.download import Archive
from petlab.errors import DownloadError
from tests.data.build import Row, build, md5_of, read_manifest
from tests.imaging import make_imagefolder

OXFORD = "https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz"
ZIP = "https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip"
ANNOTATIONS = "https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz"


def pack(path: Path, members: dict[str, bytes]) -> Archive:
    """A local archive holding `members` (name: bytes), and where the downloader finds it, with its MD5."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(path, "w:gz" if path.suffix == ".gz" else "w") as tf:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return Archive(path.as_uri(), md5_of(path.read_bytes()))


@pytest.fixture
def published(tmp_path):
    """Two small 'public' archives (a zip and a tar.gz with a list file), and a manifest of a set from each."""
    photos = sorted(make_imagefolder(tmp_path / "photos", {"train": 2}).rglob("*.jpg"))
    data = {p.name: p.read_bytes() for p in photos}
    names = sorted(data)
    listing = "#image class\n" + "".join(f"{Path(n).stem} 1 1 1\n" for n in names) + "other_9 2 2 1\n"
    served = tmp_path / "served"
    served.mkdir()
    archives = {
        ZIP: pack(served / "cats_and_dogs_filtered.zip", {f"top/train/{n}": data[n] for n in names}),
        OXFORD: pack(served / "images.tar.gz", {f"images/{n}": data[n] for n in names} | {"images/x.mat": b"m"}),
        ANNOTATIONS: pack(served / "annotations.tar.gz", {"annotations/list.txt": listing.encode()}),
    }
    cut = "".join(f"{Path(n).stem} 1 1 1\n" for n in names[:2]).encode()
    rows = [Row("zipped", f"train/{n}", ZIP, f"top/train/{n}", "file", md5_of(data[n])) for n in names] + [
        Row("tarred", f"images/{n}", OXFORD, f"images/{n}", "file", md5_of(data[n])) for n in names[:2]] + [
        Row("tarred", "annotations/list.txt", ANNOTATIONS, "annotations/list.txt", "lines", md5_of(cut))]
    return rows, archives, data, cut


def test_each_set_is_built_from_its_archives_checked_and_kept_on_a_rerun(tmp_path, published):
    rows, archives, data, cut = published
    out = tmp_path / "data"
    assert sorted(build(out, rows, archives)) == ["tarred", "zipped"]
    for row in rows:
        expected = cut if row.kind == "lines" else data[Path(row.path).name]
        assert (out / row.set / row.path).read_bytes() == expected
    assert (out / "tarred/annotations/list.txt").read_text().splitlines()[0].split()[0] == Path(rows[-3].path).stem
    assert (out / "README.md").is_file() and "manifest" in (out / "README.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == [".downloads", "README.md", "tarred", "zipped"]
    assert build(out, rows, archives) == []  # already there and matching: nothing fetched or written
    (out / rows[0].set / rows[0].path).write_bytes(b"edited")
    with pytest.raises(DownloadError, match="exists but differs"):
        build(out, rows, archives)
    assert (out / rows[0].set / rows[0].path).read_bytes() == b"edited"  # a user's folder is never overwritten


def test_an_archive_that_is_not_the_published_one_is_refused_and_nothing_is_left(tmp_path, published):
    rows, archives, _, _ = published
    out = tmp_path / "data"
    altered = {**archives, ZIP: Archive(archives[ZIP].url, "0" * 32)}
    with pytest.raises(DownloadError, match="checksum mismatch for .*cats_and_dogs_filtered.zip"):
        build(out, rows, altered)
    assert sorted(p.name for p in out.iterdir()) == [".downloads"]
    assert list((out / ".downloads").iterdir()) == []  # the bad download is deleted too


def test_a_photo_whose_checksum_differs_and_a_missing_member_are_named(tmp_path, published):
    rows, archives, _, _ = published
    wrong = [*rows[:-1], Row(*[*vars(rows[-1]).values()][:5], "f" * 32)]
    with pytest.raises(DownloadError, match="tarred/annotations/list.txt from annotations.tar.gz.*manifest says f+"):
        build(tmp_path / "a", wrong, archives)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [".downloads"]  # no half-built set
    absent = [*rows, Row("tarred", "images/gone.jpg", OXFORD, "images/gone.jpg", "file", "0" * 32)]
    with pytest.raises(DownloadError, match="images.tar.gz has no images/gone.jpg"):
        build(tmp_path / "b", absent, archives)


def test_an_archive_petlab_does_not_know_is_refused(tmp_path, published):
    rows, archives, _, _ = published
    stray = [Row("x", "a.jpg", "https://example.org/a.zip", "a.jpg", "file", "0" * 32)]
    with pytest.raises(DownloadError, match="archives petlab does not know"):
        build(tmp_path / "data", stray, archives)


def test_the_manifest_rebuilds_every_shared_photo_byte_for_byte(shared, tmp_path):
    """The repository's manifest, against archives packed as the published ones from the shared sets (the
    members it names, under the names it gives): every shared file is named, and each comes back the same."""
    rows = read_manifest()
    named = {(row.set, row.path) for row in rows}
    on_disk = {(p.relative_to(shared).parts[0], p.relative_to(shared / p.relative_to(shared).parts[0]).as_posix())
               for p in shared.rglob("*") if p.is_file() and p.parent != shared}
    assert on_disk == named
    members: dict[str, dict[str, bytes]] = {}
    for row in rows:
        members.setdefault(row.archive, {})[row.member] = (shared / row.set / row.path).read_bytes()
    served = tmp_path / "served"
    served.mkdir()
    archives = {url: pack(served / url.rsplit("/", 1)[1], files) for url, files in members.items()}
    out = tmp_path / "data"
    assert sorted(build(out, rows, archives)) == sorted({row.set for row in rows})
    for row in rows:
        assert (out / row.set / row.path).read_bytes() == (shared / row.set / row.path).read_bytes(), row.path


def test_a_member_larger_than_the_manifest_says_is_refused_while_it_streams(tmp_path, published):
    """A 1.58 MB zip holding a 1.5 GB member once peaked at 3.9 GB: the member was read whole before its MD5
    check. Now each member is read a block at a time, up to the size the manifest gives."""
    import resource

    rows, archives, data, _ = published
    name = Path(rows[0].path).name
    sized = [Row(*[*vars(row).values()][:6], len(data[Path(row.path).name]) if row.kind == "file" else None)
             for row in rows]
    served = tmp_path / "bomb"
    served.mkdir()
    bomb = served / "cats_and_dogs_filtered.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open(f"top/train/{name}", "w") as member:  # 200 MB of zeros: about 200 KB compressed
            for _ in range(200):
                member.write(bytes(2**20))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DownloadError, match=f"{name} is over {len(data[name])} bytes"):
        build(tmp_path / "data", sized, {**archives, ZIP: Archive(bomb.as_uri(), md5_of(bomb.read_bytes()))})
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KB: not the 200 MB
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".downloads"]
    assert all(row.size for row in read_manifest())  # the repository's manifest gives every file's size
