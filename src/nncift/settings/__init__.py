"""Settings are data: one dataclass per stage (:mod:`.stages`), the one field machinery that checks them and
reads them from YAML and flags (:mod:`.fields`), and every allowed-value list (:mod:`.choices`)."""
