"""The model card (README.md of best/ and model/): Hub metadata that huggingface_hub parses back, and a body
with the recipe, metrics, per-class AP, training time and hardware, usage and the plots."""

from __future__ import annotations

import dataclasses
import json

from huggingface_hub import ModelCard

from hftrain.recipe.schema import Recipe
from hftrain.report.model_card import PLOT_LIMIT_BYTES, build_card, dataset_name, write_card

METRICS = {"map": 0.41234, "map_50": 0.6, "map_75": 0.44, "map_small": -1.0, "map_medium": 0.3, "map_large": 0.5,
           "mar_1": 0.2, "mar_10": 0.4, "mar_100": 0.55, "mar_small": -1.0, "mar_medium": 0.5, "mar_large": 0.6,
           "ap_kangaroo": 0.45, "ap_wallaby": -1.0}
INFO = {"epoch": 12, "map": 0.41234, "metrics": METRICS,
        "training": {"seconds": 3725.4, "epochs": 12, "steps": 1200, "device": "NVIDIA H100 80GB HBM3",
                     "device_type": "cuda", "num_processes": 4, "precision": "bf16", "torch_version": "2.9.0",
                     "transformers_version": "5.1.0"}}
CONFIG = {"model_type": "rt_detr", "id2label": {"0": "kangaroo", "1": "wallaby"}, "hftrain_score_threshold": 0.4213}


def recipe(**changes) -> dict:
    """A resolved recipe as recipe.yaml holds it (every default), with dotted ``changes``."""
    out = dataclasses.asdict(Recipe())
    out["data"]["format"] = "voc"
    out["data"]["train"]["images"] = "/data/kangaroo/images"
    for key, value in changes.items():
        *parents, last = key.split(".")
        node = out
        for parent in parents:
            node = node[parent]
        node[last] = value
    return out


def test_the_metadata_parses_back_as_a_hub_card_with_the_metrics():
    text = str(build_card(INFO, recipe(**{"model.pretrained": "PekingU/rtdetr_r50vd", "hub.license": "apache-2.0"}),
                          CONFIG, [], repo_id="someone/kangaroo-rtdetr"))
    data = ModelCard(text).data  # huggingface_hub's own parser, model-index included
    assert data.library_name == "transformers" and data.pipeline_tag == "object-detection"
    assert data.base_model == "PekingU/rtdetr_r50vd"
    assert data.datasets == ["kangaroo"]
    assert data.tags == ["object-detection", "hftrain", "rt_detr"]
    assert data.license == "apache-2.0"
    assert data.model_name == "kangaroo-rtdetr"
    results = {r.metric_type: r for r in data.eval_results}
    # the table's metrics that were measured; AP small (-1: no small boxes) is left out, not reported as -1
    assert sorted(results) == ["map", "map_50", "map_75", "map_large", "map_medium", "mar_100"]
    assert results["map"].metric_value == 0.4123 and results["map"].metric_name == "mAP@[.5:.95]"
    assert {(r.task_type, r.dataset_name, r.dataset_type, r.dataset_split) for r in data.eval_results} == {
        ("object-detection", "kangaroo", "voc", "validation")}


def test_a_model_from_scratch_or_a_local_folder_has_no_base_model_and_no_license_unless_given(tmp_path):
    for pretrained in (None, str(tmp_path)):
        data = ModelCard(str(build_card(INFO, recipe(**{"model.pretrained": pretrained}), CONFIG, []))).data
        assert data.base_model is None and data.license is None
        assert "base_model" not in data.to_dict() and "license" not in data.to_dict()
    text = str(build_card(INFO, recipe(**{"model.pretrained": str(tmp_path)}), CONFIG, []))
    assert f"fine-tuned from `{tmp_path}`" in text  # the local folder is named in the body


def test_the_body_has_the_recipe_metrics_per_class_ap_training_usage_and_plots():
    text = str(build_card(INFO, recipe(**{"data.augment.mosaic": 0.5, "train.epochs": 12, "optim.lr": 2e-4}), CONFIG,
                          ["pr_curves.png", "f1_curve.png"], repo_id="someone/kangaroo-rtdetr"))
    body = text.split("\n---\n", 1)[1]
    for row in ("| family | `rt_detr` |", "| image size | shortest edge 800, longest at most 1333 |",
                "| augmentation | horizontal flip 0.5, mosaic 0.5 |", "| epochs | 12 |",
                "| batch | 2 per device x 1 accumulation |", "| optimizer | adamw, lr 0.0002, backbone x 0.1, weight decay 0.0001 |",
                "| mAP@[.5:.95] | 0.4123 |", "| AP small | n/a |", "| kangaroo | 0.4500 |", "| wallaby | n/a |",
                "| training time | 1 h 02 min (wall clock, 12 epochs, 1200 optimizer steps) |",
                "| hardware | 4 x NVIDIA H100 80GB HBM3 |", "| precision | bf16 |",
                'detector = pipeline("object-detection", model="someone/kangaroo-rtdetr")',
                'detections = detector("image.jpg", threshold=0.421)',
                "![pr_curves](plots/pr_curves.png)", "![f1_curve](plots/f1_curve.png)"):
        assert row in body, row
    assert "2 classes: kangaroo, wallaby" in body and "after epoch 12" in body
    text = str(build_card(INFO, recipe(**{"data.augment.preset": "rtdetr", "data.augment.stop_epoch": 11}), CONFIG, []))
    assert "| augmentation | horizontal flip 0.5, preset rtdetr, stop_epoch 11 |" in text
    assert "recommended score threshold, 0.421" in body


def test_voc_ap_is_in_the_table_and_the_model_index_when_it_was_computed():
    info = {**INFO, "metrics": {**METRICS, "voc07_map": 0.61, "voc_map": 0.625}}
    text = str(build_card(info, recipe(**{"eval.voc": True}), CONFIG, []))
    assert "| VOC07 mAP@0.5 (11-point) | 0.6100 |" in text and "| VOC mAP@0.5 (all-point) | 0.6250 |" in text
    assert {r.metric_type: r.metric_value for r in ModelCard(text).data.eval_results}["voc_map"] == 0.625


def test_without_a_measured_threshold_the_card_says_so():
    config = {k: v for k, v in CONFIG.items() if k != "hftrain_score_threshold"}
    text = str(build_card(INFO, recipe(), config, []))
    assert 'threshold=0.5)' in text and "No recommended score threshold was measured" in text
    assert 'model="path/to/model"' in text and "## Plots" not in text


def test_dataset_names():
    assert dataset_name(recipe(**{"data.format": "hf", "data.train.images": "cppe-5"}))[::2] == ("cppe-5", True)
    assert dataset_name(recipe(**{"data.format": "hf", "data.train.images": "rishitdagli/cppe-5"})) == (
        "rishitdagli/cppe-5", "rishitdagli/cppe-5", True)
    assert dataset_name(recipe(**{"data.format": "coco", "data.train.images": "/data/coco/train2017"})) == ("coco", "coco", False)
    assert dataset_name(recipe(**{"data.format": "bdd100k", "data.train.images": "/d/bdd100k/images/100k/train"}))[0] == "bdd100k"
    assert dataset_name(recipe(**{"data.format": "yolo", "data.train.images": "/d/helmets/data.yaml"}))[0] == "helmets"
    assert dataset_name(recipe(**{"data.synthetic": {"kind": "shapes"}}))[:2] == ("shapes", "synthetic")


def test_write_card_copies_the_existing_plots_and_leaves_no_partial_file(tmp_path):
    folder, plots = tmp_path / "model.partial", tmp_path / "plots"
    folder.mkdir(), plots.mkdir()
    (folder / "config.json").write_text(json.dumps(CONFIG))
    (plots / "pr_curves.png").write_bytes(b"\x89PNG small")
    (plots / "confusion_matrix.png").write_bytes(b"\x89PNG" + b"0" * PLOT_LIMIT_BYTES)  # too large: named, not copied
    (plots / "timing.png").write_bytes(b"\x89PNG not a card plot")
    card = write_card(folder, INFO, recipe(), plots, repo_id="someone/m")
    assert sorted(p.name for p in folder.rglob("*")) == ["README.md", "config.json", "plots", "pr_curves.png"]
    assert (folder / "plots" / "pr_curves.png").read_bytes() == b"\x89PNG small"
    text = card.read_text()
    assert "![pr_curves](plots/pr_curves.png)" in text and "confusion_matrix.png: not copied" in text
    assert "threshold=0.421" in text  # read from the folder's config.json
    assert ModelCard.load(card).data.eval_results[0].metric_value == 0.4123
