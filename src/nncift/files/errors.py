"""The error of a stored result (a run folder, a feature store, a warm-up checkpoint) made with other settings."""

from __future__ import annotations


class SettingsMismatch(RuntimeError):
    """Stored results were made with other settings than the ones asked for now."""
