"""recfm: a foundation model for personalized recommendation."""

__version__ = "0.1.0"
