"""Pure torch/numpy models: features, next-action GRU, traffic graph-GRU, baselines, anomaly scoring."""
