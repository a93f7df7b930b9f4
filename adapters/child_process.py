"""Our own modules as plain child interpreters (`python -m adapters.x`).

Not multiprocessing: fork is unsafe in a process that runs threads, and spawn/forkserver
re-run the parent's __main__ script in every child. The child finds this project's packages
through PYTHONPATH (the project root first), whatever the parent's working directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = str(Path(__file__).resolve().parent.parent)


def spawn_module(module: str, *args: str, **popen: Any) -> subprocess.Popen[bytes]:
    """Start `python -m module args...` with this interpreter; `popen` goes to Popen."""
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    return subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", module, *args],
        env={**os.environ, "PYTHONPATH": path},
        **popen,
    )
