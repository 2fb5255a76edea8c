"""The single source of procpool's version number."""

__version__ = "0.1.0"
