"""Settings are data: one dataclass per stage (:mod:`.stages`), the one field machinery that checks them (each field
declares its range and choices: :mod:`.fields`), YAML and flags merged one way (:mod:`.sources`), flags made from the
fields (:mod:`.flags`), and every allowed-value list (:mod:`.choices`)."""
