"""llmrec: LLM-based multimodal recommendation (I-LLMRec, HistLLM), their baselines, data and evaluation."""

__version__ = "0.1.0"
