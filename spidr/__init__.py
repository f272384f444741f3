"""SpidR: self-supervised speech encoder (model, pretraining, data pipeline, feature and unit extraction)."""
