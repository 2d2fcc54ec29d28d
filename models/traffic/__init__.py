"""Traffic forecasting: sensor networks, data, graph-GRU model, forecaster, training, evaluation, anomalies, baselines."""
