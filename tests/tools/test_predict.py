"""``hftrain predict`` on the shared tiny trained run: folders, globs, thresholds, category ids, drawn
images, unreadable files, EXIF orientation, and the same boxes and scores as ``hftrain eval``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState
from PIL import Image

from hftrain.cli import main as cli_main
from hftrain.data.shapes import generate_shapes_coco
from hftrain.tools.eval import evaluate_run
from hftrain.tools.predict import collect_images, predict_images


def read(out: Path) -> tuple[list[dict], dict]:
    return json.loads((out / "predictions.json").read_text()), json.loads((out / "summary.json").read_text())


def test_predict_on_a_folder_matches_eval_and_writes_original_ids_and_drawn_images(trained_run, tmp_path):
    _, run_dir = trained_run
    # 96-pixel images: resized to the run's 64 and the boxes scaled back, by predict as by eval
    labels = generate_shapes_coco(tmp_path / "data", "other", 6, image_size=96, seed=5)
    folder = tmp_path / "data" / "other"
    predicted = predict_images(run_dir, [str(folder)], tmp_path / "out", threshold=0.0, batch_size=4)
    results, summary = read(tmp_path / "out")
    assert results == predicted["predictions"] and results
    files = sorted(p.name for p in folder.glob("*.jpg"))
    assert [Path(i["file_name"]).name for i in summary["images"]] == files and summary["unreadable"] == []
    assert {(i["width"], i["height"]) for i in summary["images"]} == {(96, 96)}
    assert summary["model"] == str(run_dir / "best") and summary["threshold_from"] == "--threshold"
    # the shapes COCO file numbers its categories 1..3: the results use them, not the labels 0..2
    assert summary["category_ids"] == "the dataset's own"
    assert summary["categories"] == [{"id": 1, "name": "rectangle"}, {"id": 2, "name": "ellipse"},
                                     {"id": 3, "name": "triangle"}]
    assert {r["category_id"] for r in results} <= {1, 2, 3} and 3 in {r["category_id"] for r in results}
    for r in results:
        x, y, w, h = r["bbox"]
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0 and x + w <= 96 + 1e-4 and y + h <= 96 + 1e-4
    drawn = sorted(p.name for p in (tmp_path / "out" / "images").iterdir())
    assert drawn == files
    assert Image.open(tmp_path / "out" / "images" / files[0]).size == (96, 96)

    # the evaluation path on the same images gives the same detections (same preprocessing, same model)
    AcceleratorState._reset_state(reset_partial_state=True)
    evaluate_run(run_dir, split="test", data_overrides=[f"data.test.images={folder}", f"data.test.labels={labels}"],
                 name="predict_check")
    evaluated = json.loads((run_dir / "predictions_best_predict_check.json").read_text())
    names = {im["id"]: im["file_name"] for im in json.loads(labels.read_text())["images"]}

    def by_file(entries, name_of):
        grouped = {}
        for e in entries:
            grouped.setdefault(name_of(e), []).append((e["category_id"], *e["bbox"], e["score"]))
        return {k: sorted(v, key=lambda t: -t[-1]) for k, v in grouped.items()}

    ours = by_file(results, lambda e: Path(e["file_name"]).name)
    theirs = by_file(evaluated, lambda e: Path(names[e["image_id"]]).name)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert len(ours[name]) == len(theirs[name])
        for a, b in zip(ours[name], theirs[name]):
            assert a[0] == b[0] and a[1:] == pytest.approx(b[1:], abs=1e-4), name


def test_glob_threshold_default_and_saved_threshold(trained_run, shapes_dir, tmp_path):
    _, run_dir = trained_run
    pattern = str(shapes_dir / "val" / "*.jpg")
    all_scores = [r["score"] for r in predict_images(run_dir, [pattern], tmp_path / "all", threshold=0.0,
                                                     draw=False, workers=1)["predictions"]]  # a decoding worker
    assert not (tmp_path / "all" / "images").exists()
    cut = sorted(all_scores)[len(all_scores) // 2]  # half the detections pass
    AcceleratorState._reset_state(reset_partial_state=True)
    assert cli_main(["predict", str(run_dir), pattern, "--out", str(tmp_path / "cut"), "--threshold", str(cut),
                     "--device", "cpu"]) == 0
    results, summary = read(tmp_path / "cut")
    assert sorted(r["score"] for r in results) == pytest.approx(sorted(s for s in all_scores if s >= cut))
    assert len(summary["images"]) == 8

    # no --threshold: the saved model's hftrain_score_threshold, else 0.5 (said in the summary)
    model = tmp_path / "model"
    shutil.copytree(run_dir / "best", model)  # a bare saved model folder (no recipe.yaml)
    config = json.loads((model / "config.json").read_text())
    config.pop("hftrain_score_threshold", None)  # as saved by a run without the recommendation
    (model / "config.json").write_text(json.dumps(config))
    AcceleratorState._reset_state(reset_partial_state=True)
    default = predict_images(model, [pattern], tmp_path / "default", draw=False)
    assert (default["threshold"], default["threshold_from"]) == (0.5, "default")
    assert all(r["score"] >= 0.5 for r in default["predictions"])
    (model / "config.json").write_text(json.dumps({**config, "hftrain_score_threshold": cut}))
    AcceleratorState._reset_state(reset_partial_state=True)
    saved = predict_images(model, [pattern], tmp_path / "saved", draw=False)
    assert (saved["threshold"], saved["threshold_from"]) == (cut, "the model's hftrain_score_threshold")
    # the bare folder (resize from its image processor, ids from its config) predicts what the run does
    assert saved["predictions"] == read(tmp_path / "cut")[0] and saved["category_ids"] == "the dataset's own"


def test_unreadable_files_are_reported_and_exif_orientation_applied(trained_run, shapes_dir, tmp_path):
    _, run_dir = trained_run
    folder = tmp_path / "in" / "nested"
    folder.mkdir(parents=True)
    shutil.copy(next((shapes_dir / "val").glob("*.jpg")), folder / "a.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (folder / "notes.txt").write_text("not an image")
    turned = Image.new("RGB", (40, 20), (200, 30, 30))
    exif = turned.getexif()
    exif[0x0112] = 6  # displayed turned by 90 degrees: 20 wide, 40 high
    turned.save(tmp_path / "in" / "turned.jpg", exif=exif)
    summary = predict_images(run_dir, [str(tmp_path / "in")], tmp_path / "out", threshold=0.0)
    assert [u["file"] for u in summary["unreadable"]] == [str(folder / "broken.jpg")]
    assert summary["unreadable"][0]["error"] and summary["not_images"] == 1
    sizes = {Path(i["file_name"]).name: (i["width"], i["height"]) for i in summary["images"]}
    assert sizes == {"a.jpg": (64, 64), "turned.jpg": (20, 40)}
    assert Image.open(tmp_path / "out" / "images" / "turned.jpg").size == (20, 40)
    for r in summary["predictions"]:
        if Path(r["file_name"]).name == "turned.jpg":
            assert r["bbox"][0] + r["bbox"][2] <= 20 + 1e-4 and r["bbox"][1] + r["bbox"][3] <= 40 + 1e-4


def test_bad_inputs_are_named(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="missing.jpg does not exist"):
        collect_images([str(tmp_path / "missing.jpg")])
    with pytest.raises(FileNotFoundError, match="matches no file"):
        collect_images([str(tmp_path / "*.png")])
    assert cli_main(["predict", str(tmp_path), str(tmp_path)]) == 2
    assert "neither a run directory" in capsys.readouterr().err
