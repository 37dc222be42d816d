"""Bundled default settings, so the app runs with no Django project of the user's own.

Used by the ``container-manager`` console script and the test suite. Everything a deployment
changes comes from the environment:

* ``DATABASE_URL``: ``postgres://user:pass@host:5432/db`` or ``sqlite:////abs/path.sqlite3``;
  default: SQLite at ``$CONTAINER_MANAGER_HOME/db.sqlite3``.
* ``CONTAINER_MANAGER_HOME``: data directory (default ``~/.container-manager``).
* ``DJANGO_SECRET_KEY``: default, a random key kept in ``$CONTAINER_MANAGER_HOME/secret_key``.
* ``DJANGO_DEBUG`` (default off), ``DJANGO_ALLOWED_HOSTS`` (default ``localhost,127.0.0.1``).
* ``CONTAINER_MANAGER_INSTANCE``: label that separates this installation's containers.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url


def _home() -> Path:
    home = Path(os.environ.get("CONTAINER_MANAGER_HOME", Path.home() / ".container-manager"))
    home.mkdir(parents=True, exist_ok=True)
    return home


def _secret_key() -> str:
    key = os.environ.get("DJANGO_SECRET_KEY")
    if key:
        return key
    path = _home() / "secret_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


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
    "django.contrib.staticfiles",
    "container_manager",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
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
        default=f"sqlite:///{_home() / 'db.sqlite3'}", conn_max_age=600, conn_health_checks=True
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
STATIC_ROOT = _home() / "static"

CONTAINER_MANAGER = {"INSTANCE": os.environ.get("CONTAINER_MANAGER_INSTANCE", "default")}
