"""Methods, one module each; importing this package registers them all."""

from reprlab.methods import divide_conquer, margin, mic, sharing  # noqa: F401
