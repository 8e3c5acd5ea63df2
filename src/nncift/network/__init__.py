"""The InfluenceNetwork: the calibrated-prior two-tower networks (:mod:`.towers`), the paper's MLP
(:mod:`.paper`), record-fold fitting and its selection-aware validation (:mod:`.fitting`, :mod:`.validation`),
label anchors, prediction in blocks (:mod:`.streaming`) and the network files (:mod:`.files`)."""
