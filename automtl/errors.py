"""The one exception type a user can act on.

Anything raised as :class:`UserError` is printed by the CLI as a one-line
message (no traceback) and ends the process with exit status 2.
"""


class UserError(Exception):
    """Bad input: the message names what is wrong and what is allowed."""
