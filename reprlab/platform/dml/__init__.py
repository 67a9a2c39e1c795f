"""Deep-metric-learning pieces shared by the embedding methods: distances, criteria, miners."""

from reprlab.platform.dml.adversarial import AdversarialDecorrelation, GradientReversal, grad_reverse
from reprlab.platform.dml.distance_weighted import distance_weighted_triplets
from reprlab.platform.dml.distances import pairwise_distances
from reprlab.platform.dml.margin_loss import MarginLoss
from reprlab.platform.dml.shared_triplets import shared_triplets

__all__ = [
    "AdversarialDecorrelation",
    "GradientReversal",
    "MarginLoss",
    "distance_weighted_triplets",
    "grad_reverse",
    "pairwise_distances",
    "shared_triplets",
]
