"""Methods, one module each; importing this package registers them all."""

from reprlab.methods import autoencoder, classifier, divide_conquer, iin, margin, mic, pads, sharing  # noqa: F401
