"""Where influence blocks run: the local executor and the registry (:mod:`.executor`), a Ray cluster
(:mod:`.ray_cluster`)."""
