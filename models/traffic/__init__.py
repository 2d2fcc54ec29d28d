"""Traffic forecasting: networks, data, seasonal profile, graph-GRU, forecaster, training, evaluation, incidents."""
