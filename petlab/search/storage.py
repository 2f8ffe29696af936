"""Where a study lives, and the two things several workers on one study need: admission and reaping.

- `sqlite:///path.db` (the default, embedded, no server), `journal:path.log` (Optuna's journal
  file: several processes on one host), or any SQLAlchemy URL such as `postgresql://...`
  (several machines on one study).
- Admission: a worker starts a trial only while the study has fewer than N trials that are
  complete, pruned, running or waiting, checked and created under a lock (a file lock beside
  SQLite/journal files, a PostgreSQL advisory lock), so K workers never overshoot N.
- Reaping: a trial whose worker died is failed and re-enqueued (same parameters). RDB storages
  detect it by heartbeat (works across machines); the journal by the worker's pid on this host.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import RetryHeartbeatStaleTrialCallback as RetryStale
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from petlab.errors import ConfigError
from petlab.fileio import file_lock, pid_alive
from petlab.paths import default_study_storage

MAX_RETRY = 3
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


def storage_file(url: str) -> Path | None:
    """The file behind a sqlite:/// or journal: URL; None for a database server."""
    for prefix in ("sqlite:///", "journal://", "journal:"):
        if url.startswith(prefix):
            return Path(url.removeprefix(prefix))
    return None


SECRET_PARAMS = re.compile(r"([?&][^=&]*(?:pass|pwd|secret|token)[^=&]*=)([^&#]*)", re.IGNORECASE)


def secrets_in(url: str) -> list[str]:
    """The passwords a URL carries: in `user:password@` (everything up to the last @, so a password holding @
    or / counts whole, whatever the number of slashes after the scheme) and in query parameters such as
    `?password=`. Read as text, not parsed: a URL a parser refuses (a port that is not a number) counts too."""
    if storage_file(url) is not None:
        return []
    scheme = re.match(r"[A-Za-z][\w+.-]*:/*", url)
    rest = url[scheme.end():] if scheme else url
    found = [m.group(2) for m in SECRET_PARAMS.finditer(rest) if m.group(2)]
    if scheme and "@" in rest:
        userinfo = rest.rsplit("@", 1)[0]
        if ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])
    # and the pieces a driver may show on their own ("p@ss@host" reads as password "p", host "ss@host")
    found += [piece for f in found for piece in re.split(r"[@:/]", f) if len(piece) >= 3]
    return sorted({f for f in found if f}, key=len, reverse=True)


def redacted(url: str | None, text: str | None = None) -> str:
    """A storage URL fit for a message or a log, its passwords ***; or, with `text` (a driver's error about
    that URL), the text with them hidden."""
    url = url or default_study_storage()
    shown = url if text is None else text
    for secret in secrets_in(url):
        shown = shown.replace(secret, "***")
    return shown


def open_storage(url: str | None, heartbeat_s: int = 5, grace_s: int = 20) -> optuna.storages.BaseStorage:
    url = url or default_study_storage()
    path = storage_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("journal:"):
        return JournalStorage(JournalFileBackend(str(path)))
    kwargs = {}
    if path is not None:
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # several workers write one file
    elif "://" not in url:
        raise ConfigError(f"--storage {redacted(url)!r}: expected sqlite:///FILE, journal:FILE or a database URL "
                          "such as postgresql://user:password@host/db")
    try:
        with deliberately_experimental():
            return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_s, grace_period=grace_s,
                                              heartbeat_stale_trial_callback=RetryStale(max_retry=MAX_RETRY),
                                              **kwargs)
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ArgumentError, ImportError, ValueError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise ConfigError(f"--storage {redacted(url)}: cannot open the study storage ({redacted(url, reason)})") \
            from None


@contextmanager
def admission_lock(url: str | None):
    """Serialises 'count the trials, then create one' across every worker of the study."""
    url = url or default_study_storage()
    path = storage_file(url)
    if path is not None:
        # not "<path>.lock": that name is the journal backend's own symlink lock
        with file_lock(f"{path}.admission.lock"):
            yield
    elif url.startswith("postgresql"):
        import sqlalchemy

        key = int(hashlib.sha256(b"petlab-admission").hexdigest()[:15], 16)
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        engine.dispose()
    else:  # other databases: no cross-machine lock here, so K workers may overshoot by up to K - 1
        yield


@contextmanager
def deliberately_experimental():
    """Optuna's heartbeats and stale-trial retries are marked experimental, and each use warns (every sweep
    printed them): petlab uses them on purpose (a killed worker's trial is retried), so their notices are not
    shown; any other warning is."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def counted_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=COUNTED))


def reap_dead_workers(study: optuna.Study) -> None:
    """Fail and re-enqueue the trials of workers that died (kill -9, a lost machine)."""
    storage = study._storage  # noqa: SLF001 - optuna exposes no public accessor
    if hasattr(storage, "get_heartbeat_interval"):  # RDB storages (behind optuna's cache): heartbeats
        with deliberately_experimental():
            optuna.storages.fail_stale_trials(study)
        return
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("worker_host") == host and not pid_alive(attrs.get("worker_pid", -1)):
            study_id = storage.get_study_id_from_name(study.study_name)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            if storage.set_trial_state_values(trial_id, TrialState.FAIL):
                with deliberately_experimental():
                    RetryStale(max_retry=MAX_RETRY)(study, storage.get_trial(trial_id))


@contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial):
    """Keeps the trial's heartbeat fresh while it runs (what study.optimize does for its own trials)."""
    storage = study._storage  # noqa: SLF001
    interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
    if not interval:
        yield
        return
    study_id = storage.get_study_id_from_name(study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    stop = threading.Event()

    def beat():
        while not stop.is_set():
            storage.record_heartbeat(trial_id)
            stop.wait(interval)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
