"""The bulk job's plan, without Ray: how it sizes its stages for a cluster."""

import pytest

from cifar.bulk import PredictConfig, plan_resources
from cifar.config import ConfigError


def test_resource_plan_leaves_cpus_for_decoding_and_writing_and_uses_every_gpu():
    def plan(cpus, gpus, **kw):
        return plan_resources(PredictConfig(**kw), cpus, gpus)

    two = plan(2, 0)  # the 2-core dev machine: one actor, a core for decode + write tasks
    assert (two.actors, two.device, two.gpus_per_actor) == ((1, 1), "cpu", 0.0)
    big = plan(48, 0)  # about a third of the CPUs stay with the decode tasks
    assert big.actors == (32, 32)
    for p in (two, big):
        assert p.actors[1] * p.actor_cpus + p.decode_cpus + p.write_cpus <= (2 if p is two else 48)
        assert p.decode_cpus != 1.0  # unequal to the actors' CPUs: Ray Data must not fuse them
    gpu = plan(64, 8)
    assert (gpu.actors, gpu.device, gpu.gpus_per_actor, gpu.decode_cpus) == ((8, 8), "cuda", 1, 1)
    assert plan(64, 8, gpus_per_actor=0.5).actors == (16, 16)
    assert plan(64, 8, num_actors="2-8").actors == (2, 8)
    one = plan(1, 0)  # a 1-CPU container: one actor on what decoding and writing leave
    assert one.actors == (1, 1) and one.actor_cpus + one.decode_cpus + one.write_cpus == 1
    with pytest.raises(ConfigError, match="decode images and write results"):
        plan(2, 0, num_actors="2")
    with pytest.raises(ConfigError, match="decode images and write results"):
        plan(1, 0, cpus_per_actor=1)  # asked for explicitly: refused, not shrunk
    with pytest.raises(ConfigError, match="has 0 GPUs"):
        plan(8, 0, gpus_per_actor=1)
