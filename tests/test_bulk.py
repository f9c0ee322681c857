"""The bulk job's plan, without Ray: how it sizes its stages for a cluster, empty or busy."""

import pytest

from cifar.cluster.resources import ClusterInfo
from cifar.config import ConfigError
from cifar.predict.config import PredictConfig
from cifar.predict.plan import plan_resources


def plan(cluster, **kw):
    return plan_resources(PredictConfig(**kw), cluster)


def test_plan_starts_from_what_is_free_and_grows_to_the_cluster():
    two = plan(ClusterInfo(2, 0))  # the 2-core dev machine: an actor of one thread per core
    assert (two.actors, two.device, two.gpus_per_actor) == ((1, 2, 2), "cpu", 0.0)
    assert two.decode_tasks == 1 and two.write_tasks == 2  # decoding beside the actors
    big = plan(ClusterInfo(48, 0))  # decode tasks (a third of the CPUs) share the actors' cores
    assert big.actors == (1, 48, 48) and big.decode_tasks == 16
    busy = plan(ClusterInfo(48, 0, free_cpus=6))  # other jobs hold 42 CPUs: start small
    assert busy.actors == (1, 6, 48)
    full = plan(ClusterInfo(4, 0, free_cpus=0))  # nothing free: one actor, waiting in line
    assert full.actors == (1, 1, 4)
    one = plan(ClusterInfo(1, 0))  # a 1-CPU container: decode and write ask no CPU
    assert one.actors == (1, 1, 1) and one.actor_cpus == 1


def test_plan_uses_every_gpu_and_the_actor_counts_asked_for():
    gpu = plan(ClusterInfo(64, 8))
    assert (gpu.actors, gpu.device, gpu.gpus_per_actor) == ((1, 8, 8), "cuda", 1)
    assert gpu.decode_tasks == 64  # GPU actors leave every CPU to decoding
    assert plan(ClusterInfo(64, 8, free_gpus=1)).actors == (1, 1, 8)
    assert plan(ClusterInfo(64, 8), gpus_per_actor=0.5).actors == (1, 16, 16)
    assert plan(ClusterInfo(64, 8), num_actors="2-8").actors == (2, 8, 8)
    assert plan(ClusterInfo(64, 8, free_gpus=0), num_actors="2-8").actors == (2, 2, 8)
    assert plan(ClusterInfo(48, 0), num_actors="3").actors == (3, 3, 3)


def test_plans_that_could_never_run_are_refused_before_any_work():
    with pytest.raises(ConfigError, match="has 0 GPUs"):
        plan(ClusterInfo(8, 0), gpus_per_actor=1)
    with pytest.raises(ConfigError, match="largest node of the Ray cluster has 2 CPUs"):
        plan(ClusterInfo(4, 0, largest_node_cpus=2), cpus_per_actor=3)
