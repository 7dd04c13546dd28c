"""Where a search keeps its Optuna study, for ``optuna-dashboard``: an Optuna storage beside the MLflow store.

The searcher (search/searcher.py) asks and tells its trials in this storage as Tune reports them, so a second
process (``optuna-dashboard <storage>``, ``optuna.load_study``) sees the study live. The default is a SQLite
file ``optuna.db`` beside a local MLflow store (``mlflow.db`` in the working folder by default), else in the
local results folder (an MLflow tracking server); with a server and S3 results there is no local place, and the
study stays in the driver's memory unless ``--optuna-storage`` names one. ``--optuna-storage`` takes an RDB URL
(``sqlite:///...``, ``postgresql://...``), the path of an Optuna journal file, or ``none``. The study's name is
the search's. The storage is opened once here; Tune pickles it with the searcher (an RDB storage as its URL, a
journal as its file's path), so a ``--resume`` writes the same study.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from tracking.mlflow_runs import local_store
from tracking.redact import redact_uri
from tracking.storage import SearchStorage
from trainables.errors import InputError

FLAG = "--optuna-storage"
NONE = "none"  # no storage: the study lives in the driver's memory (and in Tune's pickled searcher state)
FILE_NAME = "optuna.db"
#: seconds a write waits for a reader's lock on a SQLite study (a dashboard reading while trials report)
SQLITE_TIMEOUT = 60.0
#: a new RDB file's tables are created by whoever opens it first, a reader too (optuna-dashboard, load_study):
#: opening it while another process creates them fails once, then finds them
CREATE_ATTEMPTS = 3


def default_url(tracking_uri: str, results: SearchStorage) -> str | None:
    """``optuna.db`` beside a local SQLite MLflow store, else in the local results folder; None with neither."""
    store = local_store(tracking_uri)
    if store is not None:
        return f"sqlite:///{store.expanduser().resolve().parent / FILE_NAME}"
    if results.filesystem is None:
        return f"sqlite:///{Path(results.storage_path) / FILE_NAME}"
    return None


def resolve(option: str | None, tracking_uri: str, results: SearchStorage) -> str | None:
    """The storage of ``--optuna-storage`` (None: the default; ``none``: no storage): an RDB URL as given, a
    journal file as an absolute path."""
    if option is None:
        return default_url(tracking_uri, results)
    if option == NONE:
        return None
    if "://" in option:
        return option
    return str(Path(option).expanduser().resolve())


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite:///")


def open_storage(url: str) -> Any:
    """The Optuna storage at ``url`` (an RDB URL, else a journal file's path), created if missing; a storage that
    cannot be opened is one InputError line. A new SQLite file is put in WAL mode, so a dashboard reading it
    never blocks the search's writes."""
    import optuna
    import sqlalchemy.exc
    from optuna.storages.journal import JournalFileBackend

    try:
        if not is_sqlite(url) and "://" not in url:
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(url))
        kwargs: dict[str, Any] = {}
        if is_sqlite(url):
            path = Path(url[len("sqlite:///"):].split("?", 1)[0])
            path.parent.mkdir(parents=True, exist_ok=True)
            with closing(sqlite3.connect(path)) as connection:  # WAL mode is kept in the file: set once for all
                connection.execute("PRAGMA journal_mode=WAL")
            kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT}}
        for attempt in range(CREATE_ATTEMPTS):
            try:
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
            except sqlalchemy.exc.DBAPIError:  # "table ... already exists", a version stamped: by a reader meanwhile
                if attempt == CREATE_ATTEMPTS - 1:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")
    except Exception as exc:  # sqlite3/SQLAlchemy errors, a missing DB driver, an unwritable folder
        raise InputError(f"{FLAG} {redact_uri(url)}: {(str(exc) or type(exc).__name__).splitlines()[0]}") from None


def check_new_study(storage: Any, url: str, name: str) -> None:
    """Refuses a new search whose study ``name`` already holds trials in ``storage`` (another search of that
    name, e.g. under another --storage): its trials would mix with this search's and steer its sampler."""
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # no such study
        return
    if study.get_trials(deepcopy=False):
        raise InputError(f"an Optuna study named {name!r} already has trials in {redact_uri(url)}: choose another "
                         f"--name, or another {FLAG}")


def check_resumed(given: str | None, recorded: str | None, name: str) -> None:
    """With ``--resume``: refuses a ``--optuna-storage`` other than the search's (as its parent run recorded
    it, credentials masked): the resumed searcher writes the study where it started."""
    if given is not None and recorded is not None and redact_uri(given) != recorded:
        raise InputError(f"{FLAG} {redact_uri(given)} differs from search {name}'s {recorded}: a resumed search "
                         f"keeps its Optuna study where it started; leave {FLAG} out")


#: the parent-run param that records a search's study storage (``vars(args)`` of search/run.py)
PARAM = "optuna_storage"


def prepare(option: str | None, name: str, tracking_uri: str, results: SearchStorage, parent: Any,
            resume: bool) -> tuple[str, Any]:
    """(the study's storage as the parent run records it: a URL, a journal path or ``NONE``; the opened storage
    for the searcher, None for none). A new search's storage is opened and its study ``name`` checked to be new;
    a resumed search's searcher is Tune's saved one, with its own storage: ``option`` must then be the one
    ``parent`` (its MLflow parent run, None if not found) recorded, and nothing is opened."""
    url = resolve(option, tracking_uri, results)
    if resume:
        recorded = None if parent is None else parent.data.params.get(PARAM, NONE)
        check_resumed(None if option is None else url or NONE, recorded, name)
        return (recorded if recorded is not None else url or NONE), None
    if url is None:
        return NONE, None
    storage = open_storage(url)
    check_new_study(storage, url, name)
    return url, storage


def dashboard_line(url: str | None, name: str) -> str:
    """The closing line that says how to open search ``name``'s study (credentials masked)."""
    if url is None or url == NONE:
        return (f"optuna study (search {name}): not kept, in the driver's memory only (no local MLflow store or "
                f"results folder, or {FLAG} none); {FLAG} URL keeps it for optuna-dashboard")
    return f"optuna study (search {name}): optuna-dashboard {redact_uri(url)}"


__all__ = ["FILE_NAME", "FLAG", "NONE", "PARAM", "check_new_study", "check_resumed", "dashboard_line", "default_url",
           "is_sqlite", "open_storage", "prepare", "resolve"]
