"""Prediction: the config, the classifier, inputs and listing, preflight, resource plan, the Ray
Data pipeline, output formats, committing result files, and the report. Imports nothing from
training."""
