"""The LLM-based recommenders, one method per file: I-LLMRec, UniMP, HistLLM and its CTR presets, Rec-GPT4V.

``base`` holds what every model around a frozen LLM shares."""
