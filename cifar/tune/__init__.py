"""Searching the training recipe with Ray Tune (``cifar-tune``): the search space, how trials
pack onto the cluster, one trial (a training run), the sweep's driver and what it writes."""
