"""Models the pipeline runs: loading causal LMs, tokenizers and sentence embedders (:mod:`.loading`), and the
cached embeddings that are the InfluenceNetwork's input (:mod:`.embeddings`, :mod:`.lm_embeddings`)."""
