"""The commands' orchestration over the stages, and the only place that knows their order: ``select``
(:mod:`.select`), ``select --add`` (:mod:`.add`), ``score`` (:mod:`.score`), ``inspect`` (:mod:`.inspect`)."""
