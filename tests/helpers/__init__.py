"""Helpers shared by the tests and the benchmarks (one importable place, as ``torch.testing``):
image files of every kind, the tutorial's network verbatim, a real S3 server on loopback, a
fault-injecting proxy, saved models. Nothing here runs in a job."""
