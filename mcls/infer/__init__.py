"""Prediction: the predictor, how a run is served (TTA, person sharing, members, age bias), submissions."""
