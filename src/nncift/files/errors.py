"""The errors a user can cause, as their own types, so that the command line tells them from bugs.

A **user error** reports something the user gave or controls: a flag, a setting, an input file, a model,
a run folder, the machine (a missing extra, too few devices). It says in one line what is wrong and
what to do; ``nncift`` prints that line and exits with code 2. Every user error derives from
:class:`UserError` (and keeps a built-in base, ``ValueError`` or ``RuntimeError``, so ``except
ValueError`` in user code still catches it). Any other exception is a bug in nncift: the command line
shows its traceback and asks for a report. Each stage package defines its own user errors
(``DataError``, ``SettingsError``, ``ModelError``, ``RunNotReady``, ...); this bottom module holds the
base, the error of a stored result made with other settings, and :class:`InputError` for the rest.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user gave or controls cannot be used as it is; the message says what and what to do.

    Raise a subclass; never this class itself. Not a bug in nncift: the command line prints the message
    as one line (exit code 2), without a traceback.
    """


class InputError(UserError, ValueError):
    """A value the user gave (a flag, a setting, an argument, a set of records) cannot be used as given, where no
    more specific user error fits; the message names it."""


class SettingsMismatch(UserError, RuntimeError):
    """Stored results were made with other settings than the ones asked for now."""
