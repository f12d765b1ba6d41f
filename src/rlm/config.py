"""Where rlm keeps per-user files: the user directory (``RLM_USER_PATH`` overrides it)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["USER_PATH_ENV", "user_dir"]

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
