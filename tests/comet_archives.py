"""Comet's own check of an offline archive, without the network: the JSON-schema validators comet_ml's
OfflineSender (what `comet upload` runs) applies to the experiment file and to every message, raising on the
first message that fails, as the sender does with raise_validation_error_for_tests."""

from __future__ import annotations

import json
import os
import zipfile
from collections import Counter
from pathlib import Path

from petlab.tracking.comet import configure_comet_environment

# message type -> the OfflineSender attribute holding its validator (offline.py: _init_message_validators and
# _send_messages); "ws_msg" carries parameters or metrics or anything else, told apart as the sender does.
VALIDATORS = {
    "file_upload": "upload_msg_validator", "remote_file": "remote_file_msg_validator",
    "os_packages": "os_packages_msg_validator", "graph": "graph_msg_validator",
    "system_details": "system_details_msg_validator", "cloud_details": "cloud_details_msg_validator",
    "log_other": "log_other_message_validator", "file_name": "file_name_msg_validator",
    "html": "html_msg_validator", "htmlOverride": "html_override_msg_validator",
    "installed_packages": "installed_packages_validator", "gpu_static_info": "gpu_static_info_msg_validator",
    "git_metadata": "git_metadata_msg_validator", "system_info": "system_info_msg_validator",
    "log_dependency": "log_dependency_msg_validator", "remote_model": "remote_model_msg_validator",
    "3d_cloud": "cloud_3d_msg_validator", "register_model": "register_model_msg_validator",
    "parameter_msg": "parameter_msg_validator", "metric_msg": "metric_msg_validator",
    "standard_output": "standard_output_msg_validator",
}


def validate_archive(archive: Path, scratch: Path) -> Counter:
    """Every message of `archive` through comet_ml's own validators; jsonschema's ValidationError on the first
    that fails. Returns how many messages of each type passed."""
    configure_comet_environment()
    from comet_ml.offline import OfflineSender

    folder = scratch / archive.stem
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(folder)
    os.environ.setdefault("COMET_API_KEY", "offline-validation-only")
    sender = OfflineSender(api_key="offline-validation-only", offline_dir=str(folder),
                           raise_validation_error_for_tests=True)
    sender.experiment_file_validator.validate(json.loads((folder / "experiment.json").read_text()))
    counts: Counter = Counter()
    for offset, line in enumerate((folder / "messages.json").read_text().splitlines(), start=1):
        message = json.loads(line)
        kind, payload = message["type"], message["payload"]
        if kind in ("ws_msg", "metric_msg"):  # as _send_messages: the offset injected, then told apart
            payload = {**payload, "offset": offset}
            if payload.get("metric"):
                kind = "metric_msg"
            elif "param" in payload or "params" in payload:
                kind, payload = "parameter_msg", message["payload"]
        name = "ws_msg_validator" if kind == "ws_msg" else VALIDATORS.get(kind)
        assert name, f"message type {kind!r} has no validator here: add it from comet_ml's offline.py"
        getattr(sender, name).validate(payload)
        counts[kind] += 1
    return counts
