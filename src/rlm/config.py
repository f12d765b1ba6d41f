"""Settings read from the machine: the user directory (``RLM_USER_PATH`` overrides it) and
the command line's default backend."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DEFAULT_BACKEND", "USER_PATH_ENV", "user_dir"]

#: The backend ``rlm run`` and ``rlm bench`` use when ``-b`` is not given: the embedded
#: model, so the command line works offline with no key.  Change it here only.
DEFAULT_BACKEND = "local"

#: The environment variable that moves the user directory (as llm's ``LLM_USER_PATH``).
USER_PATH_ENV = "RLM_USER_PATH"


def user_dir() -> Path:
    """The user directory: ``$RLM_USER_PATH`` when set, else ``~/.rlm``.

    Read on every call (so tests and callers can change the variable); nothing is created
    here, writers create the sub-folders they need.
    """
    override = os.environ.get(USER_PATH_ENV)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".rlm"
