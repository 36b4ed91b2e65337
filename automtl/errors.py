"""The exception types: :class:`UserError`, the one a user can act on, and :class:`TrialFailed`.

Anything raised as :class:`UserError` is printed by the CLI as a one-line
message (no traceback) and ends the process with exit status 2.
"""


import errno

# errno values meaning the disk (or the user's quota) is full: not a trial's fault, so the search stops.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class UserError(Exception):
    """Bad input: the message names what is wrong and what is allowed."""


class TrialFailed(Exception):
    """A trial that produced no usable result (the reason is recorded on the trial)."""


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL
