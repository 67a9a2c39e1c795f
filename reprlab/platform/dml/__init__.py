"""Deep-metric-learning pieces shared by the embedding methods: distances, criteria, miners."""

from reprlab.platform.dml.distance_weighted import distance_weighted_triplets
from reprlab.platform.dml.distances import pairwise_distances
from reprlab.platform.dml.margin_loss import MarginLoss

__all__ = ["MarginLoss", "distance_weighted_triplets", "pairwise_distances"]
