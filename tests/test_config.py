import pytest

from cifar.cluster.resources import ClusterInfo
from cifar.config import ConfigError, build_parser, parse_explicit
from cifar.train.config import (
    TrainConfig,
    default_batch,
    default_lr,
    resolve_config,
    resolve_recipe,
)
from cifar.train.driver import prepare_run, resolve_scale


def _cfg(argv):
    p = build_parser(TrainConfig, "t", "d")
    return resolve_config(parse_explicit(p, argv))


def test_defaults_leave_batch_and_lr_to_the_data():
    c = _cfg([])
    assert (c.momentum, c.nesterov, c.schedule, c.augment, c.normalize) == (
        0.9,
        True,
        "onecycle",
        True,
        True,
    )
    assert c.label_smoothing == 0.1 and c.batch_size is None and c.lr is None
    typed = resolve_recipe(_cfg(["--batch-size", "96", "--lr", "0.03"]), 50000, 2)
    assert (typed.batch_size, typed.lr) == (96, 0.03)  # typed values are never changed


@pytest.mark.parametrize(
    ("n", "world", "epochs", "batch", "lr"),
    [
        (245, 1, 2, 4, 0.0315),  # the tutorial's ants/bees: 2 epochs need small steps
        (245, 2, 2, 4, 0.0315),
        (7000, 1, 2, 16, 0.05),  # the small real set of the recipe issue
        (7000, 2, 2, 16, 0.05),
        (7000, 1, 4, 32, 0.063),
        (50000, 1, 2, 128, 0.1),
        (50000, 1, 20, 256, 0.1),
        (50000, 4, 20, 256, 0.1),
        (1000, 3, 2, 3, 0.0286),  # a multiple of the workers, each at least one image
        (3, 1, 1, 4, 0.0315),
    ],
)
def test_recipe_picks_batch_and_lr_from_data_workers_and_epochs(n, world, epochs, batch, lr):
    assert default_batch(n, world, epochs) == batch
    assert default_lr(batch) == lr
    got = resolve_recipe(TrainConfig(epochs=epochs), n, world)
    assert (got.batch_size, got.lr) == (batch, lr)
    steps = -(-n // batch) * epochs
    assert steps >= min(n * epochs // 256, 256)  # enough optimizer steps to learn


def test_tutorial_recipe_reproduces_the_tutorial_and_flags_still_win():
    c = _cfg(["--recipe", "tutorial"])
    assert (c.lr, c.batch_size, c.epochs, c.momentum, c.weight_decay) == (0.01, 64, 10, 0, 0)
    assert not c.augment and not c.normalize and c.schedule == "constant"
    assert c.label_smoothing == 0 and not c.nesterov
    assert _cfg(["--recipe", "tutorial", "--epochs", "3"]).epochs == 3


def test_smoke_test_preset():
    c = _cfg(["--smoke-test"])
    assert c.num_workers == 2 and c.epochs == 1 and c.use_gpu is False and c.synthetic


def test_bool_flags_have_negations():
    c = _cfg(["--no-augment", "--no-download", "--relu", "--gpu"])
    assert (c.augment, c.download, c.relu, c.use_gpu) == (False, False, True, True)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num-workers", "0"], "--num-workers must be at least 1"),
        (["--lr", "-0.1"], "--lr must be positive"),
        (["--epochs", "0"], "--epochs"),
        (["--batch-size", "2", "--num-workers", "4"], "global batch"),
        (["--resume"], "--resume needs --name"),
        (["--momentum", "0"], "--nesterov needs --momentum"),
        (["--freeze-backbone"], r"--freeze-backbone trains only the head .* pass --weights"),
        (["--image-size", "8"], "--image-size must be at least 16"),
        (["--arch", "resnet81"], r"unknown architecture 'resnet81'.*resnet18"),
        (["--backbone-lr", "20", "--arch", "resnet18"], r"--backbone-lr is a share of --lr"),
        (["--data-memory-mb", "0"], "--data-memory-mb must be positive"),
    ],
)
def test_impossible_values_are_refused_with_the_flag_named(argv, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(argv)


def test_unknown_flag_exits_2_naming_it(capsys):
    with pytest.raises(SystemExit) as e:
        _cfg(["--num-wrkers", "2"])
    assert e.value.code == 2
    assert "unknown flag --num-wrkers (did you mean --num-workers?)" in capsys.readouterr().err


def test_use_gpu_without_gpus_fails_fast_and_defaults_follow_the_cluster():
    with pytest.raises(ConfigError, match="no GPUs"):
        resolve_scale(_cfg(["--gpu"]), ClusterInfo(cpus=8, gpus=0))
    assert resolve_scale(_cfg([]), ClusterInfo(cpus=8, gpus=2))[0] is True
    use_gpu, cpus = resolve_scale(_cfg(["--num-workers", "2"]), ClusterInfo(8, 0))
    assert (use_gpu, cpus) == (False, 4)  # cpus is also the torch threads
    two_nodes = ClusterInfo(4, 0, largest_node_cpus=2, smallest_node_cpus=2)
    assert resolve_scale(_cfg([]), two_nodes) == (False, 2)  # a worker never spans nodes


def test_ray_data_loading_leaves_cpus_to_its_decode_tasks_or_is_refused():
    """--data-loading ray: the workers take half of what they would (Ray Data's 1-CPU decode
    tasks get the rest); workers that would hold every CPU are refused before any work, where
    Ray Data would otherwise wait for a CPU for ever."""
    ray = ["--data-loading", "ray"]
    assert resolve_scale(_cfg(ray), ClusterInfo(2, 0)) == (False, 1)
    for argv, cpus in (([*ray, "--num-workers", "2"], 2), ([*ray, "--cpus-per-worker", "4"], 4)):
        with pytest.raises(ConfigError, match=r"would leave 0 of the \d CPUs .*ing stream"):
            resolve_scale(_cfg(argv), ClusterInfo(cpus, 0))
    assert resolve_scale(_cfg(["--num-workers", "2"]), ClusterInfo(2, 0)) == (False, 1)
    # elastic: Ray Train places as many workers as fit, up to the most, not the fewest
    grow = [*ray, "--num-workers", "1-2", "--cpus-per-worker"]
    with pytest.raises(ConfigError, match=r"2 worker\(s\) of 1 CPU\(s\) \(an elastic run"):
        resolve_scale(_cfg([*grow, "1"]), ClusterInfo(2, 0))
    assert resolve_scale(_cfg([*grow, "2"]), ClusterInfo(3, 0)) == (False, 2)  # 1 left
    # a fixed size is placed whole or not at all: 2 workers of 2 CPUs on 3 CPUs never start
    with pytest.raises(ConfigError, match=r"2 worker\(s\) of 2 CPU\(s\) would leave 0 of the 3"):
        resolve_scale(
            _cfg([*ray, "--num-workers", "2", "--cpus-per-worker", "2"]), ClusterInfo(3, 0)
        )
    gpus = [*ray, "--gpu", "--num-workers", "1-4", "--cpus-per-worker", "2"]  # 2 GPUs: 2 placed
    assert resolve_scale(_cfg(gpus), ClusterInfo(8, 2)) == (True, 2)


def test_resume_of_unknown_run_and_reuse_of_a_name(tmp_path):
    with pytest.raises(ConfigError, match="no run named 'ghost'"):
        prepare_run(_cfg(["--resume", "--name", "ghost", "--storage-path", str(tmp_path)]))
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match=r"already exists.*--resume"):
        prepare_run(_cfg(["--name", "taken", "--storage-path", str(tmp_path)]))
    named = prepare_run(_cfg(["--storage-path", str(tmp_path)]))
    assert named.name.startswith("cifar-")


def test_resume_refuses_a_changed_recipe(tmp_path):
    import json

    run = tmp_path / "r"
    run.mkdir()
    saved = resolve_recipe(_cfg([]), 7000, 1)  # a run's config.json holds what was chosen
    assert (saved.batch_size, saved.lr) == (128, 0.1)  # 20 epochs of 7,000 images
    (run / "config.json").write_text(json.dumps(saved.to_dict()))
    with pytest.raises(ConfigError, match=r"--lr 0\.1 -> 0\.2"):
        prepare_run(
            _cfg(["--resume", "--name", "r", "--storage-path", str(tmp_path), "--lr", "0.2"])
        )
    ok = prepare_run(
        _cfg(["--resume", "--name", "r", "--storage-path", str(tmp_path), "--num-workers", "3"])
    )
    assert ok.num_workers == 3
    assert (ok.batch_size, ok.lr) == (128, 0.1)  # the recipe it started with, not re-picked


def test_a_resumed_run_keeps_the_size_and_backbone_lr_it_chose(tmp_path):
    import json

    run = tmp_path / "r"
    run.mkdir()
    argv = ["--arch", "resnet18", "--weights", "w.pth"]
    saved = resolve_recipe(_cfg(argv), 700, 1)
    assert (saved.image_size, saved.backbone_lr, saved.batch_size) == (224, 1.0, 32)
    (run / "config.json").write_text(json.dumps(saved.to_dict()))
    resumed = [*argv, "--resume", "--name", "r", "--storage-path", str(tmp_path)]
    ok = prepare_run(_cfg(resumed))
    assert (ok.arch, ok.image_size, ok.batch_size, ok.weights) == ("resnet18", 224, 32, "w.pth")
    with pytest.raises(ConfigError, match=r"--image-size 224 -> 64"):
        prepare_run(_cfg([*resumed, "--image-size", "64"]))


def test_one_precision_vocabulary_and_the_old_amp_key(capsys):
    assert _cfg([]).precision == "auto"
    assert _cfg(["--precision", "bf16"]).precision == "bf16"
    assert _cfg(["--precision", "fp16"]).precision == "fp16"
    assert resolve_config({}, {"amp": "off"}).precision == "fp32"  # old config.json files
    with pytest.raises(SystemExit) as e:
        _cfg(["--amp", "off"])  # one spelling on the command line
    assert e.value.code == 2 and "unknown flag --amp" in capsys.readouterr().err


def test_a_mistyped_flag_is_one_line_with_the_nearest_flag(capsys):
    for typed, near in ((["--epoch", "3"], "--epochs"), (["--batchsize=8"], "--batch-size")):
        with pytest.raises(SystemExit) as e:
            _cfg(typed)
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1
        assert f"did you mean {near}?" in err and "usage" not in err


def test_switches_that_are_off_have_no_negation_and_one_gpu_spelling():
    text = build_parser(TrainConfig, "t", "d").format_help()
    for flag in ("--resume", "--smoke-test", "--compile", "--verbose", "--relu"):
        assert flag in text and f"--no-{flag[2:]}" not in text
    assert "--gpu, --no-gpu" in text and "--use-gpu" not in text
    assert "--augment, --no-augment" in text  # on by default: it can be turned off


def test_a_config_file_is_yaml_or_json_and_refuses_unknown_keys(tmp_path):
    from cifar.config import config_yaml, read_config_file

    printed = config_yaml(_cfg(["--epochs", "3", "--lr", "0.05"]), leave_out=("name", "resume"))
    (tmp_path / "c.yaml").write_text(printed)
    again = resolve_config({}, read_config_file(str(tmp_path / "c.yaml"), TrainConfig))
    assert config_yaml(again, leave_out=("name", "resume")) == printed  # the same run
    assert (again.epochs, again.lr) == (3, 0.05)
    (tmp_path / "c.json").write_text('{"epochs": 2, "seed": 7}')
    assert read_config_file(str(tmp_path / "c.json"), TrainConfig) == {"epochs": 2, "seed": 7}
    (tmp_path / "bad.yaml").write_text("epoch: 3\nbatchsize: 8\n")
    with pytest.raises(ConfigError, match=r"'epoch' \(did you mean 'epochs'\?\), 'batchsize' "):
        read_config_file(str(tmp_path / "bad.yaml"), TrainConfig)
    smoke = resolve_config({}, {"smoke_test": True})  # a printed smoke-test config runs as one
    assert smoke.synthetic and smoke.num_workers == 2


def test_flags_are_listed_in_groups():
    text = build_parser(TrainConfig, "t", "d").format_help()
    sections = {}
    for group in ("data", "recipe", "scale", "run", "speed"):
        assert f"\n{group}:\n" in text
        sections[group] = text.split(f"\n{group}:\n", 1)[1].split("\n\n", 1)[0]
    assert "--val-fraction" in sections["data"] and "--lr" in sections["recipe"]
    assert "--num-workers" in sections["scale"] and "--precision" in sections["speed"]
    assert "--lr" not in sections["data"]
