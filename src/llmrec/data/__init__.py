"""Data pipeline: raw files -> importers -> canonical tables -> processing (k-core, splits) -> dataset directory."""
