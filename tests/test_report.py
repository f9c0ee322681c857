"""What a prediction job says about its results, without Ray: the preview's sample, the
progress lines of a long job, the columns --probs adds and the formats that can hold them."""

from __future__ import annotations

import logging
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cifar.config import ConfigError
from cifar.predict.config import PredictConfig
from cifar.predict.report import RowProgress, preview_sample


def _table(rows: list[tuple[str, str, str | None]]) -> pa.Table:
    paths, preds, labels = zip(*rows, strict=True)
    return pa.table(
        {
            "path": list(paths),
            "class_name": list(preds),
            "confidence": [0.5] * len(rows),
            "label": list(labels),
            "error": [None] * len(rows),
        }
    )


def test_the_preview_shows_wrong_predictions_first_then_every_class_in_turn():
    rows = [(f"/a/{c}{i}.png", c, c) for c in "abc" for i in range(5)]  # all right
    rows += [("/a/z1.png", "a", "b"), ("/a/z2.png", "c", "a"), ("/a/z0.png", "a", "c")]
    picked = preview_sample(_table(rows), 7)
    assert [(r["path"], r["class_name"]) for r in picked[:3]] == [
        ("/a/z0.png", "a"),  # wrong ones first, by predicted class in turn, each by path
        ("/a/z2.png", "c"),
        ("/a/z1.png", "a"),
    ]
    assert [r["class_name"] for r in picked[3:]] == ["a", "b", "c", "a"]  # then every class
    unlabelled = _table([(p, c, None) for p, c, _ in rows])
    assert [r["class_name"] for r in preview_sample(unlabelled, 4)] == ["a", "b", "c", "a"]


def test_a_long_job_says_how_far_it_is_every_few_seconds(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cifar.progress")
    part = pa.table({"path": [f"/x/{i}" for i in range(50)]})
    pq.write_table(part, tmp_path / "part-0.parquet")  # committed before: not this run's work
    with RowProgress(str(tmp_path), "parquet", total=200, every=0.2):
        for k in (1, 2):
            pq.write_table(part, tmp_path / f"part-{k}.parquet")
            time.sleep(0.5)
    lines = [r.message for r in caplog.records]
    assert lines and lines[-1].startswith("[cifar] 100 of 200 files classified (50%), ")
    assert "img/s, about " in lines[-1] and "s left" in lines[-1]
    assert any(ln.startswith("[cifar] 50 of 200 files classified (25%)") for ln in lines)


def test_probs_need_a_format_that_holds_lists():
    base = {"model": "m", "input": ["i"], "output": "o", "probs": True}
    PredictConfig(**base).validate()
    PredictConfig(**base, format="jsonl").validate()
    with pytest.raises(ConfigError, match="--format csv cannot hold"):
        PredictConfig(**base, format="csv").validate()


def test_pictures_of_generated_images_say_so_in_their_title(tmp_path):
    """Inputs in a tree cifar-data synthetic wrote, or a model trained on generated data."""
    from cifar.data.synthetic import write_folders
    from cifar.predict.preflight import preflight
    from cifar.predict.report import generated_note
    from tests.helpers.models import save_untrained

    write_folders(tmp_path / "gen", 6, 3, num_classes=2, seed=0)
    model = save_untrained(tmp_path / "m", classes=("airplane", "automobile"))
    cfg = PredictConfig(
        model=str(model), input=[str(tmp_path / "gen/val")], output=str(tmp_path / "o")
    )
    assert generated_note(preflight(cfg)) == "GENERATED images: "
    (tmp_path / "real").mkdir()
    (tmp_path / "gen/val/airplane").rename(tmp_path / "real/airplane")
    cfg = PredictConfig(
        model=str(model), input=[str(tmp_path / "real")], output=str(tmp_path / "o2")
    )
    assert generated_note(preflight(cfg)) == ""
    trained = save_untrained(tmp_path / "m2", dataset={"kind": "folder", "generated": True})
    cfg = PredictConfig(
        model=str(trained), input=[str(tmp_path / "real")], output=str(tmp_path / "o3")
    )
    assert generated_note(preflight(cfg)) == "model trained on GENERATED data: "
