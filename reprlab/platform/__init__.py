"""The engine: config, data, models, evaluation, training on Ray Train. Knows no method by name."""
