"""Mistakes a user can make, said in one line.

A bad setting, a model file that is missing or not a model, a credentials file that cannot be
read, a port another process holds, a program that is not installed: each is raised as a
``UserError`` where it is found, with a message that names the input and says what is wrong
with it. ``voxbus.cli.main`` is the one place that prints it, as ``voxbus <command>: <message>``
on stderr, and exits with status 2 (as argparse does for a bad command line); ``VOXBUS_DEBUG=1``
lets the traceback through instead.

Only inputs a user chose belong here: a bug stays an ordinary exception with its traceback.
"""

from __future__ import annotations

#: Set to 1 to see the traceback of a ``UserError`` instead of its one line.
DEBUG_ENV = "VOXBUS_DEBUG"
#: The exit status of a command stopped by a ``UserError``.
EXIT_STATUS = 2


class UserError(Exception):
    """Bad input from the user (environment, files, ports, installed programs); the message is
    one line that names the input and says what to change."""


def user_error(exc: BaseException) -> UserError | None:
    """``exc`` itself when it is a ``UserError``, or the first one in an exception group made
    only of them (a ``TaskGroup`` whose tasks failed on bad input); else ``None``: a bug."""
    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        found = [user_error(e) for e in exc.exceptions]
        if found and all(found):
            return found[0]
    return None
