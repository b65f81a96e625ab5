"""The papers' experiments as commands (``llmrec experiments COMMAND``), built on the library:
``efficiency`` (I-LLMRec Fig. 1/6), ``ctr-efficiency`` and ``history-sweep`` (HistLLM Fig. 5/4), ``probe``
([REC] linear probes), ``bench`` (training/evaluation throughput) and ``demo`` (the whole pipeline on
MovieLens-100K, an everyday command: ``llmrec demo``)."""
