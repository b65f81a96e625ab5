"""Evaluation: pure metric functions and the protocol that feeds them model scores."""
