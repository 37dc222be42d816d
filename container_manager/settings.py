"""Bundled default settings, so the app runs with no Django project of the user's own.

Used by the ``container-manager`` console script and the test suite. Everything a deployment
changes comes from the environment:

* ``DATABASE_URL``: ``postgres://user:pass@host:5432/db`` or ``sqlite:////abs/path.sqlite3``;
  default: SQLite at ``$CONTAINER_MANAGER_HOME/db.sqlite3``.
* ``CONTAINER_MANAGER_HOME``: data directory (default ``~/.container-manager``).
* ``DJANGO_SECRET_KEY``: default, a random key kept in ``$CONTAINER_MANAGER_HOME/secret_key``.
* ``DJANGO_DEBUG`` (default off), ``DJANGO_ALLOWED_HOSTS`` (default ``localhost,127.0.0.1``).
* ``CONTAINER_MANAGER_INSTANCE``: label that separates this installation's containers.

The admin's static files are served by WhiteNoise straight from the installed packages, so
``container-manager runserver`` (or any WSGI server) shows a styled admin with DEBUG off and
no ``collectstatic``. A data directory that cannot be written is reported in one sentence
(``DataDirectoryError``) naming the directory and what to set instead, not as a traceback of
``mkdir``.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import warnings
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured


class DataDirectoryError(ImproperlyConfigured):
    """The data directory cannot hold what the bundled settings keep there."""


def _home() -> Path:
    return Path(os.environ.get("CONTAINER_MANAGER_HOME", Path.home() / ".container-manager"))


def _usable_home(what: str, instead: str) -> Path:
    """The data directory, created if missing; a clear error when it cannot hold ``what``."""
    home = _home()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        problem = exc.strerror or str(exc)
    else:
        if os.access(home, os.W_OK | os.X_OK):
            return home
        problem = "not writable by this user"
    raise DataDirectoryError(
        f"data directory {home}: {problem}; it holds {what}. Set CONTAINER_MANAGER_HOME to a "
        f"directory this user can write, or set {instead}."
    )


def _secret_key() -> str:
    key = os.environ.get("DJANGO_SECRET_KEY")
    if key:
        return key
    path = _home() / "secret_key"
    try:
        if not path.exists():
            _usable_home("the generated secret key", "DJANGO_SECRET_KEY")
            _create_secret_key(path)
        return path.read_text().strip()
    except OSError as exc:
        raise DataDirectoryError(
            f"secret key file {path}: {exc.strerror or exc}. Make it readable by this user, "
            "or set DJANGO_SECRET_KEY."
        ) from None


def _create_secret_key(path: Path) -> None:
    """Write a new key whole, then link it into place: processes that start together (replicas
    sharing a data directory) all end up with the one key that won, never a half-written one."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".secret_key.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(50))
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process won the race: its key is the one
    finally:
        os.unlink(temporary)


def _default_database_url() -> str:
    if os.environ.get("DATABASE_URL"):
        return ""  # not used: dj_database_url reads DATABASE_URL
    return f"sqlite:///{_usable_home('the SQLite database', 'DATABASE_URL') / 'db.sqlite3'}"


def _flag(name: str, default: bool = False) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in ("1", "true", "yes", "on")


BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = _secret_key()
DEBUG = _flag("DJANGO_DEBUG")
ALLOWED_HOSTS = [
    h.strip() for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",") if h
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    # Before staticfiles: runserver leaves static files to WhiteNoise, as every server does.
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "container_manager",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "container_manager.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
WSGI_APPLICATION = "container_manager.wsgi.application"

DATABASES = {
    "default": dj_database_url.config(
        default=_default_database_url(), conn_max_age=600, conn_health_checks=True
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE transactions take the write lock up front, so two writers queue instead of
    # failing with "database is locked" when a read transaction upgrades; WAL lets readers on.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not Django's shared-cache in-memory database: threads of the daemon then wait
    # for the write lock (busy timeout) instead of failing with "database table is locked".
    DATABASES["default"]["TEST"] = {"NAME": str(_home() / "test_db.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
STATIC_URL = "static/"
# Only for `collectstatic` (a web server in front may serve this directory instead).
STATIC_ROOT = os.environ.get("CONTAINER_MANAGER_STATIC_ROOT") or str(_home() / "static")
# WhiteNoise serves the admin's files from the installed apps (their finders), so no
# collectstatic is needed; it would warn at every start that STATIC_ROOT does not exist.
WHITENOISE_USE_FINDERS = True
warnings.filterwarnings("ignore", message="No directory at: ")

CONTAINER_MANAGER = {"INSTANCE": os.environ.get("CONTAINER_MANAGER_INSTANCE", "default")}
