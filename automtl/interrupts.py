"""Ctrl-C and SIGTERM stop a search at the next safe point, never in the middle of a storage write.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when a signal arrives, which can be
inside Optuna's journal lock (the lock file then half-released, the interrupt replaced by an ``OSError``). While
a search runs, the signals only set a flag; the loops that take time — every training and evaluation batch,
every trial asked for — call :func:`check`, which raises ``KeyboardInterrupt`` there. A second signal in the
calling process raises at once (a user who presses Ctrl-C again wants out now); workers keep waiting for their
next safe point.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_requested = threading.Event()


def check() -> None:
    """Raise ``KeyboardInterrupt`` if a stop was requested (a no-op outside :func:`deferred` and :func:`defer`)."""
    if _requested.is_set():
        raise KeyboardInterrupt


def requested() -> bool:
    return _requested.is_set()


def _handler(force_on_repeat: bool):
    def handle(_signum, _frame):
        if force_on_repeat and _requested.is_set():
            raise KeyboardInterrupt
        _requested.set()

    return handle


def defer(force_on_repeat: bool = False) -> None:
    """In a worker process: from now on the signals request a stop at the next :func:`check`."""
    _requested.clear()
    for number in SIGNALS:
        signal.signal(number, _handler(force_on_repeat))


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Defer the signals while the block runs (main thread only; elsewhere signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in SIGNALS}
    defer(force_on_repeat=True)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        _requested.clear()
