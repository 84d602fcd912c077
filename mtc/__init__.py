"""mtc: compile matting models into fast, verified deployment artifacts."""

__version__ = "0.1.0"
