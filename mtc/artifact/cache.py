"""Where mtc keeps what it can rebuild: downloaded weights, optimized models, engines."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from mtc.errors import MtcError


def cache_dir() -> Path:
    """Return the mtc cache folder, creating it if needed.

    Returns:
        `$MTC_CACHE` if set, else the platform's user cache folder for "mtc".

    Raises:
        MtcError: if the folder cannot be created.
    """
    env = os.environ.get("MTC_CACHE")
    path = Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("mtc"))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MtcError(
            f"cannot create the cache folder {path}: {exc.strerror or exc}",
            hint="set MTC_CACHE to a writable folder",
        ) from None
    return path
