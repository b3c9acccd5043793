"""``hftrain eval RUN_DIR --split/--data``: evaluation of the shared tiny trained run on splits other
than its validation split, without overwriting the validation results; class lists checked."""

from __future__ import annotations

import json

import pytest
from accelerate.state import AcceleratorState

from hftrain.cli import main as cli_main
from hftrain.data.shapes import generate_shapes_coco
from hftrain.recipe import RecipeError, load_recipe
from hftrain.tools.eval import evaluate_run


def test_eval_on_another_split_writes_its_own_metrics(trained_run, shapes_dir, tmp_path, capsys):
    _, run_dir = trained_run
    AcceleratorState._reset_state(reset_partial_state=True)
    val = evaluate_run(run_dir)
    val_file = (run_dir / "eval_best.json").read_text()
    labels = generate_shapes_coco(tmp_path, "test", 6, image_size=64, seed=7)  # a split the recipe does not name
    AcceleratorState._reset_state(reset_partial_state=True)
    assert cli_main(["eval", str(run_dir), "--split", "test", "--data", f"data.test.images={tmp_path / 'test'}",
                     f"data.test.labels={labels}"]) == 0
    test = json.loads((run_dir / "eval_best_test.json").read_text())
    assert (run_dir / "eval_best.json").read_text() == val_file  # the validation results are kept
    assert test["map"] != val["map"] and 0.0 <= test["map"] <= 1.0
    assert {"ap_rectangle", "ap_ellipse", "ap_triangle"} <= set(test)
    matrix = json.loads((run_dir / "eval_best_test_plots" / "confusion_matrix.json").read_text())
    # the columns of the true classes hold every object of the test split (the last column: background)
    assert sum(sum(row[:-1]) for row in matrix["counts"]) == len(json.loads(labels.read_text())["annotations"])
    out = capsys.readouterr().out
    assert "on 6 images of data.test" in out and "AP per class: rectangle" in out
    # the predictions are a COCO results file of the test split, in its own ids: pycocotools agrees
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(labels))
    results = json.loads((run_dir / "predictions_best_test.json").read_text())
    assert {r["image_id"] for r in results} <= set(gt.getImgIds())
    check = COCOeval(gt, gt.loadRes(results), "bbox")
    check.evaluate(), check.accumulate(), check.summarize()
    assert check.stats[0] == pytest.approx(test["map"], abs=1e-6)

    # a split of the recipe, no overrides: the run's 8 training images (data.train.subset: 8)
    AcceleratorState._reset_state(reset_partial_state=True)
    train = evaluate_run(run_dir, split="train")
    assert train["map"] != val["map"] and (run_dir / "eval_best_train.json").is_file()


def test_eval_refuses_an_unset_split_and_other_classes(trained_run, shapes_dir, tmp_path, capsys):
    _, run_dir = trained_run
    assert cli_main(["eval", str(run_dir), "--split", "test"]) == 2
    assert "data.test: not set" in capsys.readouterr().err
    assert cli_main(["eval", str(run_dir), "--data", "train.subset=2"]) == 2
    assert "only keys of the recipe's data section" in capsys.readouterr().err
    assert cli_main(["eval", str(run_dir), "--split", "test", "--data", f"data.test.images={tmp_path / 'nowhere'}"]) == 2
    assert "data.test.images: path" in capsys.readouterr().err
    coco = json.loads((shapes_dir / "val.json").read_text())
    coco["categories"][1]["name"] = "circle"
    (tmp_path / "other.json").write_text(json.dumps(coco))
    AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(ValueError, match=r"only in the model: \['ellipse'\]; only in the data: \['circle'\]"):
        evaluate_run(run_dir, split="test", data_overrides=[f"data.test.images={shapes_dir / 'val'}",
                                                             f"data.test.labels={tmp_path / 'other.json'}"])


def test_test_split_is_checked_like_the_others(shapes_dir, tmp_path):
    from conftest import tiny_recipe, write_recipe

    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(shapes_dir, tmp_path / "run"))
    assert load_recipe(path).data.test.images is None  # optional
    with pytest.raises(RecipeError, match="data.test.images: path"):
        load_recipe(path, [f"data.test.images={tmp_path / 'nowhere'}"])
    with pytest.raises(RecipeError, match="data.test.from_train: applies to data.val only"):
        load_recipe(path, ["data.test.from_train=0.2"])


def test_train_split_leaves_out_what_val_from_train_holds_out(trained_run, capsys):
    _, run_dir = trained_run
    AcceleratorState._reset_state(reset_partial_state=True)
    held = ["data.val.from_train=0.5", "data.val.images=null", "data.val.labels=null", "data.train.subset=null"]
    evaluate_run(run_dir, split="train", data_overrides=held, name="kept")
    kept = int(capsys.readouterr().out.split("evaluated ")[1].split(" on ")[1].split()[0])
    assert 0 < kept < 24 and (run_dir / "eval_best_kept.json").is_file()  # of the 24 training images


def test_a_run_whose_tracker_is_not_installed_here_still_evaluates(trained_run, tmp_path):
    """The trackers belong to training: eval (like predict and export) reads the run's recipe without them."""
    import shutil

    import yaml

    _, run_dir = trained_run
    copy = tmp_path / "run"
    copy.mkdir()
    shutil.copytree(run_dir / "best", copy / "best")
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    recipe["log"]["trackers"] = ["wandb"]  # not installed on this machine
    recipe["output_dir"] = str(copy)
    (copy / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(RecipeError, match="wandb is not installed"):
        load_recipe(copy / "recipe.yaml", check_paths=False)  # training it here would be refused
    AcceleratorState._reset_state(reset_partial_state=True)
    assert 0.0 <= evaluate_run(copy)["map"] <= 1.0
