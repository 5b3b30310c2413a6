"""Errors that carry a one-line message for the user.

Library code raises :class:`UserError` for anything the user can fix (a missing file,
an unknown name, an invalid option, a diverged run). The CLI prints its message on one
line and exits with code 2; every other exception is a bug and shows a traceback only
with ``--debug``.
"""

from __future__ import annotations

from typing import Callable


class UserError(Exception):
    """Something the user can fix. ``str(err)`` says what is wrong and what to do."""


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message (its type's name when it has none), to quote the cause
    of a failure inside a one-line :class:`UserError`."""
    return (str(err).splitlines() or [type(err).__name__])[0]


class DivergedError(UserError):
    """The loss became NaN or infinite."""


class OptionError(UserError):
    """One option has a value the user must change: ``option`` (the library's parameter name,
    e.g. ``"k"``), the ``value`` given and the ``reason`` it is wrong.

    ``str(err)`` speaks the library's names: ``k = 0: must be at least 1.``. The CLI renders the
    same error with its flag (:meth:`render`): ``--k 0: must be at least 1.``. The reason may name
    other options of the same call as ``{name}`` for each name in ``mentions`` (``"must be at least
    {k} (5)."``), spelled the same way as ``option``.
    """

    def __init__(self, option: str, value: object, reason: str, *, mentions: tuple[str, ...] = ()) -> None:
        self.option, self.value, self.reason, self.mentions = option, value, reason, tuple(mentions)
        super().__init__(self.render(lambda name: name, " = "))

    def render(self, spell: Callable[[str], str], between: str = " ") -> str:
        """The message with every option name passed through ``spell`` (the CLI gives its flag),
        ``between`` separating the option from its value."""
        reason = self.reason
        for name in self.mentions:
            reason = reason.replace("{" + name + "}", spell(name))
        return f"{spell(self.option)}{between}{self.value}: {reason}"
