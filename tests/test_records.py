"""results.json and card.json: one typed definition each (petlab/records.py), checked on write and on read."""

import json

import pytest

from petlab import rundir
from petlab.records import CARD_SCHEMA, RESULTS_SCHEMA, RecordError, checked_card, checked_results
from petlab.registry.store import read_card, write_card

RESULTS = {"status": "completed", "reason": None, "epochs_completed": 3, "best_epoch": 2, "stopped_by": None,
           "val": {"accuracy": 0.9, "loss": 0.3, "n": 40}, "test": {"accuracy": 0.85, "loss": 0.4, "n": 40},
           "wall_time_s": 12.5, "diagnostics": [], "time_budget": {"used_s": 10.0}}
CARD = {"name": "petlab-cats-vs-dogs", "task": "cats_vs_dogs", "version": 1, "status": "production",
        "arch": "efficientnet_lite0", "created_at": "2026-12-08T01:00:00+00:00", "source_run": "run",
        "selected_by": {"metric": "val_accuracy", "value": 0.99}, "classes": ["cat", "dog"],
        "preprocessing": {"image_size": 224},
        "files": {"model.onnx": "sha256:0"}, "metrics": {"val": {"accuracy": 0.99}, "test": None},
        "answers": {"served": {"logits": "model.onnx"}}}


def test_a_record_from_before_schema_versions_is_read_as_version_1_and_keeps_every_field(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(RESULTS))
    read = rundir.read_results(tmp_path)
    assert read == {**RESULTS, "schema_version": RESULTS_SCHEMA}  # a hook's keys (time_budget) kept as they are
    rundir.write_results(tmp_path, read)
    assert json.loads((tmp_path / "results.json").read_text())["schema_version"] == RESULTS_SCHEMA
    (tmp_path / "card.json").write_text(json.dumps(CARD))  # (a promotion writes whole cards: test_registry.py)
    assert read_card(tmp_path) == {**CARD, "schema_version": CARD_SCHEMA}


@pytest.mark.parametrize("broken, says", [
    ({"epochs_completed": "three"}, "epochs_completed"),
    ({"val": {"loss": 0.3}}, "val.accuracy"),
    ({"status": None}, "status"),
    ({"schema_version": RESULTS_SCHEMA + 1}, "newer than this petlab reads"),
])
def test_a_results_file_that_breaks_its_schema_is_refused_naming_the_field(tmp_path, broken, says):
    (tmp_path / "results.json").write_text(json.dumps({**RESULTS, **broken}))
    with pytest.raises(RecordError, match=says) as raised:
        rundir.read_results(tmp_path)
    assert str(tmp_path / "results.json") in str(raised.value)
    with pytest.raises(RecordError, match=says):  # and it is never written so
        rundir.write_results(tmp_path / "elsewhere", {**RESULTS, **broken})


def test_a_card_without_what_readers_rely_on_is_refused_on_write_and_on_read(tmp_path):
    card = {k: v for k, v in CARD.items() if k != "classes"}
    with pytest.raises(RecordError, match="classes"):
        write_card(tmp_path, card)
    assert not (tmp_path / "card.json").exists()
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(RecordError, match="classes"):
        read_card(tmp_path)
    with pytest.raises(RecordError, match="a JSON object expected"):
        checked_card([CARD])
    assert checked_results(RESULTS)["schema_version"] == RESULTS_SCHEMA
