"""Files every stage writes or reads: all-or-nothing writes (:mod:`.atomic`), raw access to ``.npy`` matrices
too large to map whole (:mod:`.npy`), and the error of a stored result made with other settings
(:mod:`.errors`). The bottom of the package: it imports nothing of nncift."""
