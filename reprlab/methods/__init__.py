"""One module per published method; importing this package registers them all."""

from reprlab.methods import margin  # noqa: F401
