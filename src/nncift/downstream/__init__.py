"""After selection: LoRA fine-tuning on a subset (:mod:`.finetune`), evaluation of a model on held-out records
(:mod:`.evaluate`, :mod:`.evaluation`) and in-context-learning evaluation (:mod:`.icl`)."""
