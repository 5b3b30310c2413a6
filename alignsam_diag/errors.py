"""Errors that carry a one-line message for the user.

Library code raises :class:`UserError` for anything the user can fix (a missing file,
an unknown name, an invalid option, a diverged run). The CLI prints its message on one
line and exits with code 2; every other exception is a bug and shows a traceback only
with ``--debug``.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix. ``str(err)`` says what is wrong and what to do."""


class DivergedError(UserError):
    """The loss became NaN or infinite."""
