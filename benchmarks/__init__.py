"""The project's benchmarks, each run from the repository root as ``python -m benchmarks.NAME``
(``--help`` says what it measures); what they share is in :mod:`benchmarks.common`, the recorded
figures in ``benchmarks/results/``:

    train     training throughput and time to accuracy: the tutorial's loop vs the job's
    recipe    the default recipe vs the tutorial's on the evaluation sets (``evalsets`` writes them)
    folders   image-folder training data: decode, cache, and training from the cache
    predict   the Ray Data prediction job vs a one-image-at-a-time loop
    shared    prediction jobs sharing one cluster: one after another vs all at once
    listing   listing a prediction job's inputs: time and peak memory at a million files
    scale     a prediction job at scale, and the same job killed half-way and resumed
    storage   a training run with its storage in S3 vs on local disk

Beside them: ``listing_methods`` (what ``listing`` runs in its fresh child processes) and
``realpixels`` (the crops and redrawn digits ``evalsets`` makes its sets of).
"""
