import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """The shared real photos: $PETLAB_DATA_DIR (as .ci/run sets it) or ../shared/data."""
    path = Path(os.environ.get("PETLAB_DATA_DIR") or REPO.parent / "shared" / "data")
    assert (path / "cats_and_dogs_filtered").is_dir(), f"shared real photos not found at {path}"
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    return shared_data()


@pytest.fixture(scope="session")
def real_runs(shared, tmp_path_factory) -> dict[str, Path]:
    """Three short real runs on the shared cats-vs-dogs photos, shared by the run and compare tests."""
    from tests.runs import real_photo_runs

    return real_photo_runs(shared, tmp_path_factory.mktemp("real_runs"))


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    # Decoded-image caches go to a per-session temp folder, never into the repo's data/cache.
    os.environ["PETLAB_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.setdefault("PETLAB_DATA_DIR", str(REPO.parent / "shared" / "data"))
    yield
