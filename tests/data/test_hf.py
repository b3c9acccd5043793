"""Hugging Face datasets in the Hub detection schema (cppe-5's): read in all their forms, and
hftrain's own output read the way the transformers object-detection example reads a dataset."""

from __future__ import annotations

import json
import math
import shutil

import datasets
import numpy as np
import pytest
from datasets import ClassLabel, Features, Image, List, Value

from conftest import tiny_recipe, write_recipe
from hftrain.data.convert import convert_main, load_converted
from hftrain.data.formats.coco import DatasetError
from hftrain.data.loader import DetectionDataset
from hftrain.data.schema import IMAGE_ROOT_FILE, class_names_of, objects_of
from hftrain.data.sources import load_split
from hftrain.data.transforms import Resize
from helpers.fixtures_path import fixtures_dir

COCO = fixtures_dir() / "coco"
NAMES = ["cat", "person"]  # the fixture's boxes are all persons: ClassLabel index 1, not 0
CPPE5_OBJECTS = {  # cppe-5's own features (datasets 5 spelling of Sequence({...}))
    "id": List(Value("int64")), "area": List(Value("int64")),
    "bbox": List(List(Value("float32"), length=4)), "category": List(ClassLabel(names=NAMES)),
}
CPPE5 = Features({"image_id": Value("int64"), "image": Image(), "width": Value("int32"), "height": Value("int32"),
                  "objects": CPPE5_OBJECTS})


def _coco_rows(count=None):
    """The real COCO fixture as cppe-5 rows (absolute image paths, objects a dict of lists)."""
    coco = json.loads((COCO / "test_coco.json").read_text())
    rows = []
    for entry in coco["images"][:count]:
        anns = [a for a in coco["annotations"] if a["image_id"] == entry["id"]]
        rows.append({
            "image_id": entry["id"], "image": str(COCO / entry["file_name"]),
            "width": entry["width"], "height": entry["height"],
            "objects": {"id": [a["id"] for a in anns], "area": [int(a["area"]) for a in anns],
                        "bbox": [a["bbox"] for a in anns], "category": [1] * len(anns)},
        })
    return rows


def _dataset(rows, features=CPPE5):
    return datasets.Dataset.from_list(rows, features=features)


def _expected(rows):
    """{image_id: boxes clipped to the image as every reader clips them}"""
    out = {}
    for row in rows:
        boxes = []
        for x, y, w, h in row["objects"]["bbox"]:
            x1, y1 = max(0.0, x), max(0.0, y)
            x2, y2 = min(row["width"], x + w), min(row["height"], y + h)
            boxes.append([x1, y1, x2 - x1, y2 - y1])
        out[row["image_id"]] = boxes
    return out


def _boxes(objects):
    return np.array([o["bbox"] for o in objects], dtype=np.float64).reshape(-1, 4)


def _check_read(split, rows):
    assert class_names_of(split.dataset) == NAMES
    assert split.report.category_ids == {"cat": [0], "person": [1]}
    assert split.dataset["image_id"] == [r["image_id"] for r in rows]
    expected = _expected(rows)
    for row in split.dataset:
        objects = objects_of(row)
        assert _boxes(objects) == pytest.approx(np.array(expected[row["image_id"]]), abs=1e-3)
        assert {o["category"] for o in objects} <= {1} and all(o["iscrowd"] == 0 and o["difficult"] == 0 for o in objects)
    sample = DetectionDataset(split, Resize(64, 96)).load(0)  # hftrain's own decode path reads the images
    assert sample["pixel_values"].shape[0] == 3 and sample["class_labels"].tolist() == [1] * len(expected[rows[0]["image_id"]])


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    rows = _coco_rows()
    folder = tmp_path / "cppe5_like"
    _dataset(rows).save_to_disk(str(folder))  # save_to_disk embeds the images: bytes, as on the Hub
    split = load_split("hf", str(folder))
    _check_read(split, rows)
    assert split.report.images == 4 and split.report.boxes == 14

    both = tmp_path / "dict"
    datasets.DatasetDict({"train": _dataset(rows[:3]), "validation": _dataset(rows[3:])}).save_to_disk(str(both))
    assert load_split("hf", str(both)).dataset["image_id"] == [r["image_id"] for r in rows[:3]]
    val = load_split("hf", str(both), recipe_split="val")  # the recipe's val reads the source's validation
    assert val.dataset["image_id"] == [rows[3]["image_id"]]
    assert load_split("hf", str(both), sets=["train"], recipe_split="val").dataset["image_id"] == val_ids(rows[:3])
    with pytest.raises(DatasetError, match=r"has no split 'test' \(splits: \['train', 'validation'\]\).*sets"):
        load_split("hf", str(both), sets=["test"])

    # `hftrain convert hf` writes it as an hftrain folder (images embedded, as they came), read back the same
    out = tmp_path / "converted"
    assert convert_main(["hf", "--images", str(both), "--split", "validation", "--out", str(out)]) == 0
    converted = load_split("hf", str(out))
    assert converted.report.category_ids == {"cat": [0], "person": [1]}
    assert [objects_of(r) for r in converted.dataset] == [objects_of(r) for r in val.dataset]
    assert converted.dataset[0]["image"]["bytes"] == val.dataset[0]["image"]["bytes"] is not None


def val_ids(rows):
    return [r["image_id"] for r in rows]


def test_imagefolder_with_metadata_jsonl_and_list_of_dict_objects(tmp_path):
    """What `datasets` documents for detection: images beside a metadata.jsonl, here in split folders,
    categories plain integers (no ClassLabel), width/height left out (read from the files)."""
    rows = _coco_rows()
    root = tmp_path / "folder"
    for split, chosen in (("train", rows[:3]), ("validation", rows[3:])):
        (root / split).mkdir(parents=True)
        with open(root / split / "metadata.jsonl", "w") as f:
            for row in chosen:
                name = row["image"].rsplit("/", 1)[1]
                shutil.copy(row["image"], root / split / name)
                entry = {"file_name": name, "image_id": row["image_id"], "objects": {**row["objects"], "category": [
                    7] * len(row["objects"]["bbox"])}}
                f.write(json.dumps(entry) + "\n")
    split = load_split("hf", str(root))
    assert class_names_of(split.dataset) == ["7"] and split.report.category_ids == {"7": [7]}
    assert split.image_root == (root / "train").resolve()
    assert [r["image"]["path"] for r in split.dataset] == [r["image"].rsplit("/", 1)[1] for r in rows[:3]]
    assert _boxes(objects_of(split.dataset[0])) == pytest.approx(np.array(_expected(rows)[rows[0]["image_id"]]), abs=1e-3)
    val = load_split("hf", str(root), recipe_split="val")
    assert (val.dataset[0]["width"], val.dataset[0]["height"]) == (rows[3]["width"], rows[3]["height"])  # read from the file
    assert "width/height read from the image files" in val.report.lines()[0]
    assert DetectionDataset(val, Resize(64, 96)).load(0)["boxes"].shape == (5, 4)

    # objects as a list of per-object dicts, with iscrowd: a crowd box is kept, not trained on
    listed = Features({"image": Image(), "objects": List({"bbox": List(Value("float32"), length=4),
                                                          "category": ClassLabel(names=NAMES), "iscrowd": Value("int8")})})
    listed_rows = [{"image": rows[1]["image"], "objects": [
        {"bbox": b, "category": 1, "iscrowd": int(i == 0)} for i, b in enumerate(rows[1]["objects"]["bbox"])]}]
    folder = tmp_path / "listed"
    _dataset(listed_rows, listed).save_to_disk(str(folder))
    split = load_split("hf", str(folder))
    assert split.dataset["image_id"] == [0] and split.dataset[0]["width"] == rows[1]["width"]  # defaults
    assert [o["iscrowd"] for o in objects_of(split.dataset[0])] == [1, 0, 0]
    assert len(DetectionDataset(split, Resize(64, 96)).load(0)["boxes"]) == 2


def test_a_local_hub_repository_loads_through_load_dataset(tmp_path, monkeypatch):
    """A Hub repository's files (parquet with embedded images), read by load_dataset offline."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    rows = _coco_rows()
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    _dataset(rows).to_parquet(str(repo / "data" / "train-00000-of-00001.parquet"))
    _check_read(load_split("hf", str(repo)), rows)


def test_hub_id_that_cannot_be_reached_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetError, match=r"'nobody/no-such-detection-set'.*HF_HUB_OFFLINE is set.*local cache"):
        load_split("hf", "nobody/no-such-detection-set")
    with pytest.raises(DatasetError, match="does not exist"):
        load_split("hf", str(tmp_path / "missing" / "folder"))
    # a recipe naming a Hub id is not refused as a missing path (a missing local folder still is)
    from hftrain.recipe import RecipeError, load_recipe

    recipe = {"data": {"format": "hf", "train": {"images": "cppe-5"}, "val": {"images": "nobody/cppe-5-copy"}}}
    assert load_recipe(write_recipe(tmp_path / "hub.yaml", recipe)).data.train.images == "cppe-5"
    recipe["data"]["val"]["images"] = str(tmp_path / "missing")
    with pytest.raises(RecipeError, match=r"data.val.images: path .*missing does not exist"):
        load_recipe(write_recipe(tmp_path / "local.yaml", recipe))


def test_errors_name_the_column_or_key(tmp_path):
    rows = _coco_rows(1)
    no_bbox = Features({"image": Image(), "objects": {"category": List(ClassLabel(names=NAMES))}})
    _dataset([{"image": rows[0]["image"], "objects": {"category": [1]}}], no_bbox).save_to_disk(str(tmp_path / "a"))
    with pytest.raises(DatasetError, match="objects have no key 'bbox'"):
        load_split("hf", str(tmp_path / "a"))
    no_objects = Features({"image": Image(), "labels": List(Value("int64"))})
    _dataset([{"image": rows[0]["image"], "labels": [1]}], no_objects).save_to_disk(str(tmp_path / "b"))
    with pytest.raises(DatasetError, match=r"no column 'objects' \(columns: \['image', 'labels'\]\)"):
        load_split("hf", str(tmp_path / "b"))
    row = _coco_rows(2)[1]
    bad = {**row, "objects": {**row["objects"], "area": [1]}}  # 1 area for 3 boxes
    _dataset([bad]).save_to_disk(str(tmp_path / "c"))
    with pytest.raises(DatasetError, match=r"row 0: objects\.area has 1 entries, objects.bbox 3"):
        load_split("hf", str(tmp_path / "c"))
    _dataset([row, {**row, "image": None}]).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(DatasetError, match="row 1: column 'image' holds neither bytes nor a path"):
        load_split("hf", str(tmp_path / "d"))


def test_converted_output_reads_as_the_transformers_example_reads_it(tmp_path, monkeypatch):
    """`hftrain convert` writes the Hub detection schema: what run_object_detection(_no_trainer).py
    reads of a dataset works on it (load, features, image, objects' bbox/category/area), images stay
    references to files (relative to the image root) unless embedded, and the ids stay the COCO ones."""
    out = tmp_path / "converted"
    assert convert_main(["coco", "--images", str(COCO), "--labels", str(COCO / "test_coco.json"), "--out", str(out)]) == 0
    sidecar = json.loads((out / IMAGE_ROOT_FILE).read_text())
    assert sidecar["category_ids"] == {"person": [1]} and sidecar["schema_version"] == 2
    dataset = datasets.DatasetDict({"train": datasets.load_from_disk(str(out))})
    # the example's accesses, verbatim
    if isinstance(dataset["train"].features["objects"], dict):
        categories = dataset["train"].features["objects"]["category"].feature.names
    else:
        categories = dataset["train"].features["objects"].feature["category"].names
    assert categories == ["person"]
    stored = dataset["train"].cast_column("image", Image(decode=False))
    assert stored[0]["image"] == {"bytes": None, "path": "000000000785.jpg"}  # a reference, relative to the root
    assert sum(f.stat().st_size for f in out.glob("*.arrow")) < 20_000  # no image was embedded by save_to_disk
    monkeypatch.chdir(sidecar["image_root"])  # datasets opens relative paths from the current directory
    examples = dataset["train"][:4]
    truth = {a["id"]: a for a in json.loads((COCO / "test_coco.json").read_text())["annotations"]}
    for image_id, image, objects, width, height in zip(examples["image_id"], examples["image"], examples["objects"],
                                                       examples["width"], examples["height"]):
        array = np.array(image.convert("RGB"))
        assert array.shape == (height, width, 3)
        for object_id, bbox, category, area in zip(objects["id"], objects["bbox"], objects["category"], objects["area"]):
            assert truth[object_id]["image_id"] == image_id and category == 0
            assert bbox == pytest.approx(truth[object_id]["bbox"], abs=1e-3)
            assert area == pytest.approx(truth[object_id]["area"], rel=1e-6)
    # embedded: self-contained (what push_to_hub needs), read from anywhere
    embedded = tmp_path / "embedded"
    assert convert_main(["coco", "--images", str(COCO), "--labels", str(COCO / "test_coco.json"), "--embed-images",
                         "--out", str(embedded)]) == 0
    monkeypatch.chdir(tmp_path)
    first = datasets.load_from_disk(str(embedded))[0]
    assert first["image"].size == (first["width"], first["height"])
    # and hftrain reads its own output back, undecoded, with the paths as written
    again, root = load_converted(embedded)
    assert again[0]["image"]["path"] == "000000000785.jpg" and again[0]["image"]["bytes"][:2] == b"\xff\xd8"


def test_a_folder_of_the_older_schema_asks_for_a_new_conversion(tmp_path):
    old = tmp_path / "old"
    features = Features({"image": {"path": Value("string"), "bytes": Value("binary")}, "image_id": Value("int64"),
                         "width": Value("int32"), "height": Value("int32"),
                         "objects": List({"id": Value("int64"), "bbox": List(Value("float32"), length=4),
                                          "category": ClassLabel(names=["person"]), "area": Value("float32"),
                                          "iscrowd": Value("int8"), "difficult": Value("int8")})})
    datasets.Dataset.from_list([{"image": {"path": "000000000785.jpg", "bytes": None}, "image_id": 785, "width": 640,
                                 "height": 425, "objects": []}], features=features).save_to_disk(str(old))
    (old / IMAGE_ROOT_FILE).write_text(json.dumps({"format": "coco", "image_root": str(COCO), "class_names": ["person"]}))
    with pytest.raises(DatasetError, match="re-run `hftrain convert`"):
        load_split("hf", str(old))


def test_a_cppe5_style_dataset_trains(tmp_path, shapes_dir):
    """The shapes demo as a cppe-5-style DatasetDict (save_to_disk, images embedded) trains and evaluates."""
    from hftrain.recipe import load_recipe
    from hftrain.train import train

    splits = {}
    for name, source in (("train", "train"), ("validation", "val")):
        coco = json.loads((shapes_dir / f"{source}.json").read_text())
        names = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
        index = {c["id"]: names.index(c["name"]) for c in coco["categories"]}
        rows = []
        for entry in coco["images"]:
            anns = [a for a in coco["annotations"] if a["image_id"] == entry["id"]]
            rows.append({"image_id": entry["id"], "image": str(shapes_dir / source / entry["file_name"]),
                         "width": entry["width"], "height": entry["height"],
                         "objects": {"id": [a["id"] for a in anns], "area": [int(a["area"]) for a in anns],
                                     "bbox": [a["bbox"] for a in anns], "category": [index[a["category_id"]] for a in anns]}})
        features = Features({**CPPE5, "objects": {**CPPE5_OBJECTS, "category": List(ClassLabel(names=names))}})
        splits[name] = _dataset(rows, features)
    folder = tmp_path / "shapes_hf"
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    recipe = tiny_recipe(shapes_dir, tmp_path / "run", train={"epochs": 1})
    recipe["data"].update(format="hf", train={"images": str(folder), "subset": 8}, val={"images": str(folder)})
    metrics = train(load_recipe(write_recipe(tmp_path / "hf.yaml", recipe)))
    assert math.isfinite(metrics["map"]) and len(splits["validation"]) == 8
