"""Checks of the storage URLs a study may name, pure functions with no heavy imports, so a bad
URL is an error before Optuna or MLflow is imported and before anything is written.

Each check returns nothing for an accepted URL and raises ``ValueError`` with one line that says
what is accepted. The lists follow what the libraries themselves accept:

- Optuna: ``journal:PATH`` (the harness's journal file) or a SQLAlchemy URL that
  ``optuna.storages.RDBStorage`` opens: ``sqlite:///PATH``, ``postgresql[+driver]://...``,
  ``mysql[+driver]://...``.
- MLflow 3 (``mlflow.tracking._tracking_service.utils._register_tracking_stores``): a path or
  ``file:`` URI (the file store, which MLflow 3 refuses unless ``MLFLOW_ALLOW_FILE_STORE=true``),
  ``sqlite:``, ``postgresql:``, ``mysql:``, ``mssql:`` (with an optional ``+driver``),
  ``http(s)://`` (a tracking server), ``databricks``, ``databricks-uc``, ``uc``, and schemes
  that installed plugins register (entry point group ``mlflow.tracking_store``).
"""

from __future__ import annotations

import re
from importlib.metadata import entry_points

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
OPTUNA_FORMS = "journal:PATH, sqlite:///PATH, postgresql://USER@HOST/DB or mysql://USER@HOST/DB"
OPTUNA_DIALECTS = ("sqlite", "postgresql", "mysql")
MLFLOW_DB_DIALECTS = ("sqlite", "postgresql", "mysql", "mssql")
MLFLOW_SCHEMES = ("file", "http", "https", "databricks", "databricks-uc", "uc")
MLFLOW_FORMS = "sqlite:///PATH, postgresql://..., mysql://..., http(s)://HOST:PORT, file:PATH or a folder, databricks"


def scheme(url: str) -> str | None:
    """The URL's scheme, lower case (``postgresql+psycopg2`` -> ``postgresql+psycopg2``), or
    None for a plain path (a one-letter scheme is a Windows drive, as MLflow reads it)."""
    m = _SCHEME.match(url)
    return m.group(1).lower() if m and len(m.group(1)) > 1 else None


def _dialect(s: str | None) -> str | None:
    return s.split("+", 1)[0] if s else None


def _sqlite_path(url: str, what: str) -> None:
    if not url.lower().startswith("sqlite:///") or url.rstrip("/").lower() == "sqlite:":
        raise ValueError(f"a SQLite {what} names a file: sqlite:///relative/path.db or sqlite:////abs/path.db")


def check_optuna_storage(url: str) -> None:
    """Raise ``ValueError`` unless ``url`` is an Optuna storage the harness opens."""
    s = scheme(url)
    if s == "journal":
        if not url.removeprefix("journal:").strip():
            raise ValueError("journal: needs a file path (journal:.bench/optuna.journal)")
        return
    if _dialect(s) == "sqlite":
        return _sqlite_path(url, "Optuna storage")
    if _dialect(s) in OPTUNA_DIALECTS and "://" in url:
        return
    what = f"unknown Optuna storage scheme {s + ':'!r}" if s else "not an Optuna storage URL"
    raise ValueError(f"{what}; use {OPTUNA_FORMS}")


def _plugin_schemes() -> set[str]:
    """Tracking-store schemes registered by installed MLflow plugins (read without importing mlflow)."""
    return {ep.name.lower() for ep in entry_points(group="mlflow.tracking_store")}


def check_mlflow_uri(uri: str) -> None:
    """Raise ``ValueError`` unless MLflow has a tracking store for ``uri``."""
    s = scheme(uri)
    if s is None or s in MLFLOW_SCHEMES:
        if s in ("http", "https") and not re.match(r"^https?://[^/\s]+", uri, re.I):
            raise ValueError("an http(s) tracking URI needs a host (http://HOST:PORT)")
        return
    if _dialect(s) == "sqlite":
        return _sqlite_path(uri, "tracking URI")
    if _dialect(s) in MLFLOW_DB_DIALECTS and "://" in uri:
        return
    if s in _plugin_schemes():
        return
    raise ValueError(f"MLflow has no tracking store for scheme {s + ':'!r}; use {MLFLOW_FORMS}")
