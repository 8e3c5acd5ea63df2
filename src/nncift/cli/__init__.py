"""The ``nncift`` command line (:func:`main`)."""

from nncift.cli.commands import main

__all__ = ["main"]
