"""Recommendation models. Every model implements :class:`llmrec.models.base.Recommender` and registers itself."""
