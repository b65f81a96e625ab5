"""The package version, in a module that imports nothing.

``llmrec/__init__.py`` loads :mod:`llmrec.api` on first use; a module that records the version (run
folders, the server) imports it from here, not from the package, so it does not import the API it sits under.
"""

__version__ = "0.2.0"
