"""Hyperparameter search for the baselines (``llmrec tune``): search spaces shipped per model
(:mod:`llmrec.tuning.space`, ``spaces/*.yaml``) and an Optuna study whose every trial is an ordinary run
(:mod:`llmrec.tuning.study`). Optuna comes with the ``tune`` extra; it is imported only when a study runs."""
