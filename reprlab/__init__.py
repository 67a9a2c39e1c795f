"""reprlab: a distributed experiment platform for visual similarity and representation learning."""

__version__ = "0.1.0"
