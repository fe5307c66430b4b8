"""tuneddml: find the best deep-metric-learning recipe for a dataset."""

__version__ = "0.1.0"
