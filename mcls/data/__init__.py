"""The data: competition layout -> image table, relabel decisions, folds, decoded images and their cache, face crops."""
