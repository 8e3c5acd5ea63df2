"""The run folder: its store (lock, settings, resumable block matrices), atomic files, the matrix layout, the
manifest and report, the commit record and the stored view that ``score``, ``--add`` and ``inspect`` read."""
