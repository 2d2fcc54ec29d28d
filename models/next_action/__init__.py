"""Next-action prediction: features, model, serving, training, evaluation, baselines."""
