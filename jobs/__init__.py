"""The job entry points (``ray job submit ... -- python -m jobs.train``; installed as cifar-*)."""
