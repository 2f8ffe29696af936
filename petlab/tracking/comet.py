"""Comet.ml: online when COMET_API_KEY works, otherwise an offline archive in the run directory.

A run must never hang or fail because of tracking, so:
- Comet's own probes are switched off before comet_ml is imported (error tracking, env/host
  details, cloud metadata), and its waits at exit are bounded;
- online mode is tried only after our own bounded check that the server answers (Comet's client
  retries a dead host for ~30 s); a bad key or no server falls back to offline with a warning;
- every logging call is guarded: a tracker error is logged once and the run goes on.
The offline archive is `<run>/comet/<key>.01.zip` (numbered in the order written); `comet upload
<run>/comet/*.zip` sends it later, in that order.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import threading
import urllib.request
from pathlib import Path

from petlab.monitor import METRICS
from petlab.tracking.base import Tracker

log = logging.getLogger(__name__)

DEFAULT_SERVER = "https://www.comet.com/clientlib/"

# Everything automatic is off: petlab logs explicitly, and offline runs must make no network attempt.
QUIET = dict(log_code=False, log_graph=False, auto_param_logging=False, auto_metric_logging=False,
             parse_args=False, auto_output_logging=None, log_env_details=False, log_git_metadata=False,
             log_git_patch=False, log_env_gpu=False, log_env_host=False, log_env_cpu=False,
             display_summary_level=0)


def configure_comet_environment() -> None:
    """Environment options comet_ml reads at import and experiment creation (users may override the waits)."""
    os.environ["COMET_DISABLE_AUTO_LOGGING"] = "1"  # torch is imported before comet_ml
    os.environ["COMET_ERROR_TRACKING_ENABLE"] = "false"  # sentry reports go over the network
    os.environ["COMET_AUTO_LOG_ENV_DETAILS"] = "false"
    os.environ["COMET_AUTO_LOG_ENV_HOST"] = "false"
    os.environ.setdefault("COMET_TIMEOUT_CLEANING", "30")  # end() waits up to an hour by default
    os.environ.setdefault("COMET_TIMEOUT_UPLOAD", "120")
    # comet_ml's INFO and WARNING lines are about itself (a deprecated key it sets, "may take several seconds")
    # and name the archive before number_archives renames it; petlab logs where the archive is and how to send it
    os.environ.setdefault("COMET_LOGGING_CONSOLE", "ERROR")


def server_answers(timeout: float) -> bool:
    """True when Comet's server answers within `timeout` seconds (DNS included, hence the thread)."""
    base = os.environ.get("COMET_URL_OVERRIDE", DEFAULT_SERVER).rstrip("/")
    result = []

    def probe():
        try:
            with urllib.request.urlopen(f"{base}/isAlive/ver", timeout=timeout) as response:
                result.append(response.status < 500)
        except Exception:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def guarded(method):
    """Tracking errors are warnings, never a failed run."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self.experiment is None:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any tracker failure must not stop training
            if not self._warned:
                log.warning("comet: %s failed (%s: %s); the local run record is unaffected",
                            method.__name__, type(exc).__name__, exc)
                self._warned = True
            return None

    return wrapper


class CometTracker(Tracker):
    backend = "comet"

    def __init__(self, run_dir: Path, project: str, workspace: str | None = None, previous_key: str | None = None,
                 online_timeout_s: float = 5.0):
        configure_comet_environment()
        import comet_ml  # after the environment above

        self._warned = False
        self.experiment = None
        self.archive_dir = Path(run_dir) / "comet"
        project = os.environ.get("COMET_PROJECT_NAME") or project
        workspace = os.environ.get("COMET_WORKSPACE") or workspace
        api_key = os.environ.get("COMET_API_KEY")
        if api_key:
            self.experiment = self._online(comet_ml, api_key, Path(run_dir), project, workspace, previous_key,
                                           online_timeout_s)
        if self.experiment is None:
            self.archive_dir.mkdir(parents=True, exist_ok=True)
            kwargs = dict(project_name=project, workspace=workspace, offline_directory=str(self.archive_dir), **QUIET)
            if previous_key:  # a resumed run continues its experiment (uploaded, the archives merge)
                self.experiment = comet_ml.ExistingOfflineExperiment(previous_experiment=previous_key, **kwargs)
            else:
                self.experiment = comet_ml.OfflineExperiment(**kwargs)
                self.experiment.set_name(Path(run_dir).name)
            self.mode = "offline"
            log.info("comet: offline; the archive will be in %s (upload with `comet upload %s/*.zip`)",
                     self.archive_dir, self.archive_dir)
        self.key = self.experiment.get_key()
        self.url = self.experiment.url if self.mode == "online" else None

    def _online(self, comet_ml, api_key, run_dir, project, workspace, previous_key, timeout):
        if not server_answers(timeout):
            log.warning("comet: COMET_API_KEY is set but the server did not answer within %.0fs; "
                        "falling back to offline mode", timeout)
            return None
        try:
            if previous_key:
                experiment = comet_ml.ExistingExperiment(api_key=api_key, previous_experiment=previous_key,
                                                         project_name=project, workspace=workspace, **QUIET)
            else:
                experiment = comet_ml.Experiment(api_key=api_key, project_name=project, workspace=workspace, **QUIET)
                experiment.set_name(run_dir.name)
        except Exception as exc:  # noqa: BLE001 - e.g. an invalid key
            log.warning("comet: online experiment failed (%s); falling back to offline mode", exc)
            return None
        if not experiment.alive:
            log.warning("comet: the server refused the experiment (bad COMET_API_KEY?); falling back to offline mode")
            return None
        self.mode = "online"
        log.info("comet: online experiment %s", experiment.url)
        return experiment

    @guarded
    def log_parameters(self, params):
        self.experiment.log_parameters(params)

    @guarded
    def log_others(self, values):
        self.experiment.log_others(values)

    @guarded
    def log_text(self, name, text):
        self.experiment.log_text(text, metadata={"name": name})
        self.experiment.log_asset_data(text, name=f"{name}.txt")

    @guarded
    def log_metrics(self, metrics, step=None, epoch=None):
        # a metric that does not exist (a refit epoch has no validation split: NaN) is left out, not logged as
        # NaN: comet_ml warns on each at upload (64 warnings for one breeds run) and its charts break
        finite = {k: v for k, v in metrics.items() if is_finite(v)}
        if finite:
            self.experiment.log_metrics(finite, step=step, epoch=epoch)

    @guarded
    def log_confusion_matrix(self, matrix, labels, title):
        self.experiment.log_confusion_matrix(matrix=matrix, labels=labels, title=title,
                                             file_name=f"{title.replace(' ', '-')}.json",
                                             max_categories=max(25, len(labels)))

    @guarded
    def log_image(self, path, name):
        self.experiment.log_image(str(path), name=name)

    @guarded
    def log_model(self, name, path):
        self.experiment.log_model(name, str(path))

    @guarded
    def register_model(self, name, version, status, description, tags):
        """Register a model logged in this experiment (offline: queued in the archive until upload).

        Offline, comet_ml writes the experiment's workspace into the queued message, None when none was named,
        and its own upload schema wants a string there (and a boolean `public`): `comet upload` flagged the
        experiment with an error. The message's workspace is not used on upload (the experiment's own is), so
        an unnamed one is written as "" for this message only."""
        workspace = self.experiment.workspace
        if workspace is None:
            self.experiment.workspace = ""
        try:
            self.experiment.register_model(name, version=version, status=status, description=description, tags=tags,
                                           public=False)
        finally:
            self.experiment.workspace = workspace
        return True

    @guarded
    def add_tags(self, tags):
        self.experiment.add_tags(list(tags))

    @guarded
    def log_event(self, name, message, data=None):
        self.experiment.log_text(message, metadata={"type": "diagnostic", "rule": name, **(data or {})})
        self.experiment.log_other(f"diagnostic.{name}", message)

    @guarded
    def end(self):
        experiment, self.experiment = self.experiment, None  # ending twice is a no-op
        experiment.end()
        if self.mode == "offline":
            number_archives(self.archive_dir)
            log.info("comet: offline archive written to %s", self.archive())

    def archives(self) -> list[str]:
        """Oldest first: a resumed run adds one archive per part, a promotion one more, all with the same
        experiment key (number_archives makes their names sort so)."""
        return [str(p) for p in sorted(self.archive_dir.glob("*.zip"), key=lambda p: p.stat().st_mtime)]

    def archive(self) -> str | None:
        found = self.archives()
        return found[-1] if found else None

    def record(self) -> dict:
        offline = self.mode == "offline"
        return {**super().record(), "archive": self.archive() if offline else None,
                "archives": self.archives() if offline else []}


def is_finite(value) -> bool:
    """False for a NaN or infinite number (a float, numpy's, a 0-d tensor); True for any other value."""
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


NUMBERED = re.compile(r"\.\d{2}\.zip$")


def number_archives(folder: Path) -> list[Path]:
    """Rename the archives comet_ml has just written in `folder` to `<key>.NN.zip`, numbered on from those
    already there, so that `comet upload <folder>/*.zip` (a shell glob, sorted by name) sends a run's parts and
    then its promotion in the order they were written: comet_ml names a continuation `<key>-<n>.zip`, which
    sorts before `<key>.zip`, and a continuation sent first asks the server for an experiment it has not made."""
    done = sorted(p for p in folder.glob("*.zip") if NUMBERED.search(p.name))
    renamed = []
    for archive in sorted((p for p in folder.glob("*.zip") if not NUMBERED.search(p.name)),
                          key=lambda p: p.stat().st_mtime):
        key = re.split(r"[-.]", archive.name, maxsplit=1)[0]
        target = folder / f"{key}.{len(done) + len(renamed) + 1:02d}.zip"
        archive.rename(target)
        renamed.append(target)
    return renamed


def comet_api():
    """comet_ml.API for COMET_API_KEY (the online-only features: the model registry, reading a project)."""
    configure_comet_environment()
    import comet_ml

    return comet_ml.API(api_key=os.environ["COMET_API_KEY"])


def set_model_statuses(name: str, statuses: dict[str, str]) -> None:
    """Online: set the status ("Production", "Archived", ...) of registered versions ("3.0.0") of a model."""
    api = comet_api()
    model = api.get_model(os.environ.get("COMET_WORKSPACE") or api.get_default_workspace(), name)
    for version, status in statuses.items():
        model.set_status(version, status)


def experiment_summaries(workspace: str | None, project: str) -> list[dict]:
    """Online: every experiment of a project as plain data -- id, url, name, tags, start (ms), the last
    value of each parameter, metric and other, and the per-epoch train/val curves."""
    api = comet_api()
    out = []
    for exp in api.get_experiments(workspace or api.get_default_workspace(), project_name=project):
        curves = {name: [(point.get("epoch"), float(point["metricValue"])) for point in exp.get_metrics(name)]
                  for name in ("train_loss", "train_accuracy", *METRICS)}
        out.append({
            "id": exp.id, "url": exp.url, "name": exp.name, "tags": exp.get_tags(),
            "started_ms": exp.start_server_timestamp,
            "parameters": {p["name"]: p["valueCurrent"] for p in exp.get_parameters_summary()},
            "metrics": {m["name"]: m["valueCurrent"] for m in exp.get_metrics_summary()},
            "others": {o["name"]: o["valueCurrent"] for o in exp.get_others_summary()},
            "curves": curves,
        })
    return out


def create_tracker(cfg, run_dir: Path, previous_key: str | None = None) -> Tracker:
    if cfg.tracking.backend == "none":
        return Tracker()
    try:
        return CometTracker(run_dir, cfg.tracking.project, cfg.tracking.workspace, previous_key,
                            cfg.tracking.online_timeout_s)
    except Exception as exc:  # noqa: BLE001 - e.g. comet_ml missing or broken: train untracked
        log.warning("comet: could not start tracking (%s: %s); this run is recorded locally only",
                    type(exc).__name__, exc)
        return Tracker()
