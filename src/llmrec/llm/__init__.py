"""LLM building blocks: backbone wrapper, prompts, text generation."""
