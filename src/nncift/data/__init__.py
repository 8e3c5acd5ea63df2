"""Instruction records: the readers (:mod:`.records`), the text templates every model sees (:mod:`.templates`)
and the built-in demo data set (:mod:`.demo`)."""
