"""Files every stage writes or reads: all-or-nothing writes (:mod:`.atomic`), raw access to ``.npy`` matrices
too large to map whole (:mod:`.npy`), and the base of the errors a user can cause, which the command line
tells from bugs (:mod:`.errors`); and the timer of the cost counters (:mod:`.timing`). The bottom of the package: it imports
nothing of nncift."""
