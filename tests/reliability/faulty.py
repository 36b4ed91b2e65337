"""The automtl CLI with faults injected into checkpoint writes, for the reliability tests.

    python tests/reliability/faulty.py search ...      (same arguments as ``automtl``)

AUTOMTL_FAULT_PAUSE=GLOB    the first checkpoint written to a path matching GLOB is left half-written (its
                            temp file truncated, not yet renamed into place); AUTOMTL_FAULT_MARKER is created
                            and the process waits there to be killed.
AUTOMTL_FAULT_ENOSPC=GLOB   writing a checkpoint whose path matches GLOB fails as on a full disk (ENOSPC at
                            fsync), so the real error path of ``atomic_write_bytes`` runs.

Only ``automtl.checkpoints`` sees the faulty ``os``; Optuna, MLflow and everything else write normally.
"""

import errno
import fnmatch
import os
import sys
import time
import types
from pathlib import Path

from automtl import checkpoints, cli

PAUSE, ENOSPC, MARKER = (os.environ.get(k) for k in ("AUTOMTL_FAULT_PAUSE", "AUTOMTL_FAULT_ENOSPC",
                                                       "AUTOMTL_FAULT_MARKER"))


def _destination(tmp: str) -> str:
    """The file a temp file of ``atomic_write_bytes`` (``.NAME.xxxx.tmp``) is about to become."""
    path = Path(tmp)
    return str(path.parent / path.name[1:].rsplit(".", 2)[0])


def fsync(fd: int) -> None:
    written = os.readlink(f"/proc/self/fd/{fd}")
    if ENOSPC and fnmatch.fnmatch(_destination(written), ENOSPC):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), written)
    os.fsync(fd)


def replace(src: str, dst: str) -> None:
    global PAUSE
    if PAUSE and fnmatch.fnmatch(str(dst), PAUSE):
        PAUSE = None
        os.truncate(src, os.path.getsize(src) // 2)
        Path(MARKER).touch()
        while True:
            time.sleep(1)
    os.replace(src, dst)


checkpoints.os = types.SimpleNamespace(**{**vars(os), "fsync": fsync, "replace": replace})

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
