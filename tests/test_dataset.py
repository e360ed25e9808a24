"""The data layer: parsing, errors that name the culprit, presets, the split, spawn workers."""
import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from conftest import COCO_MINI
from PIL import Image

from coco import course, data
from coco.course import (
    CLASSES,
    NUM_CLASSES,
    course_dirs,
    find_data_root,
    load_split,
    read_label_file,
    save_split,
    split_train_val,
)
from coco.data import COCOTestImageDataset, COCOTrainImageDataset, TransformSubset
from coco.transforms import EvalPreset, TrainPreset

HALF = dict(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])


def make_layout(root, stems_labels, test_stems=("t1",), size=(40, 30)):
    """A hand-made course folder: {stem: label file text}."""
    dirs = course_dirs(root)
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    for stem, text in stems_labels.items():
        Image.new("RGB", size, (200, 10, 10)).save(dirs["train_images"] / f"{stem}.jpg")
        (dirs["train_labels"] / f"{stem}.cls").write_bytes(text.encode())
    for stem in test_stems:
        Image.new("RGB", size, (10, 10, 200)).save(dirs["test_images"] / f"{stem}.jpg")
    return dirs


def test_class_names():
    assert NUM_CLASSES == 80 == len(set(CLASSES))
    assert CLASSES[0] == "person" and CLASSES[70] == "toaster" and CLASSES[78] == "hair drier"
    assert CLASSES[-1] == "toothbrush"


def test_label_file_tolerates_blanks_spaces_crlf_bom_duplicates(tmp_path):
    path = tmp_path / "a.cls"
    path.write_bytes("\ufeff 56\r\n\r\n60 \r\n56\r\n  \r\n0".encode("utf-8"))
    assert read_label_file(path) == [0, 56, 60]


@pytest.mark.parametrize("text, line_no, shown", [
    ("1\nabc\n", 2, "'abc'"), ("80\n", 1, "80 not in 0..79"), ("-1\n", 1, "-1 not in 0..79"),
    ("3\n\n4.0\n", 3, "'4.0'"), ("1 2\n", 1, "'1 2'"),
])
def test_label_file_errors_name_file_line_and_text(tmp_path, text, line_no, shown):
    path = tmp_path / "bad.cls"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        read_label_file(path)
    assert f"bad.cls:{line_no}:" in str(err.value) and shown in str(err.value)


def test_train_dataset_items_shapes_and_order(demo_root):
    dirs = course_dirs(demo_root)
    ds = COCOTrainImageDataset(dirs["train_images"], dirs["train_labels"])
    assert ds.stems == sorted(ds.stems) and len(ds) == 240
    image, target = ds[3]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and max(image.size) == 96
    assert target.dtype == torch.float32 and target.shape == (80,)
    expected = read_label_file(dirs["train_labels"] / f"{ds.stems[3]}.cls")
    assert torch.nonzero(target).flatten().tolist() == expected
    assert ds.targets.dtype == np.float32 and ds.targets.shape == (240, 80)
    ds_t = COCOTrainImageDataset(dirs["train_images"], dirs["train_labels"], max_images=10,
                                 transform=EvalPreset(image_size=64, **HALF))
    assert len(ds_t) == 10 and ds_t.stems == ds.stems[:10]
    assert ds_t[0][0].shape == (3, 64, 64)


def test_test_dataset_returns_stems_sorted(demo_root):
    ds = COCOTestImageDataset(course_dirs(demo_root)["test_images"], transform=EvalPreset(image_size=32, **HALF))
    assert len(ds) == 60 and ds.stems == sorted(ds.stems)
    image, stem = ds[0]
    assert stem == ds.stems[0] and isinstance(stem, str) and image.shape == (3, 32, 32)


def test_bad_label_fails_at_construction_not_mid_epoch(tmp_path):
    dirs = make_layout(tmp_path, {"a": "1\n", "b": "2\nseven\n"})
    with pytest.raises(ValueError, match=r"b\.cls:2: .*'seven'"):
        COCOTrainImageDataset(dirs["train_images"], dirs["train_labels"])


def test_unmatched_files_raise_with_count_and_names_or_are_skipped(tmp_path, capsys):
    dirs = make_layout(tmp_path, {"a": "1\n", "b": "2\n", "c": "3\n"})
    (dirs["train_images"] / "a.jpg").unlink()
    Image.new("RGB", (8, 8)).save(dirs["train_images"] / "orphan.jpg")
    with pytest.raises(FileNotFoundError) as err:
        COCOTrainImageDataset(dirs["train_images"], dirs["train_labels"])
    message = str(err.value)
    assert "1 label file(s)" in message and ": a" in message and "1 image(s)" in message and "orphan" in message
    ds = COCOTrainImageDataset(dirs["train_images"], dirs["train_labels"], skip_unmatched=True)
    assert ds.stems == ["b", "c"]
    assert "skipped 1 label file(s) without image and 1 image(s) without label file" in capsys.readouterr().out


def test_undecodable_image_is_named_or_skipped(tmp_path, capsys):
    dirs = make_layout(tmp_path, {"a": "1\n", "b": "2\n"})
    (dirs["train_images"] / "b.jpg").write_bytes(b"not a jpeg at all")
    ds = COCOTrainImageDataset(dirs["train_images"], dirs["train_labels"])
    with pytest.raises(OSError, match=r"b\.jpg: cannot decode image"):
        ds[1]
    ds = COCOTrainImageDataset(dirs["train_images"], dirs["train_labels"], skip_unreadable=True)
    assert ds.stems == ["a"] and "skipped 1 unreadable image(s)" in capsys.readouterr().out


def test_truncated_jpeg_is_reported(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(OSError, match="cut.jpg"):
        data.load_rgb(path)


@pytest.mark.parametrize("mode, suffix", [("L", ".jpg"), ("CMYK", ".jpg"), ("P", ".png"), ("RGBA", ".png"),
                                          ("LA", ".png"), ("I;16", ".png")])
def test_any_colour_mode_becomes_rgb(tmp_path, mode, suffix):
    path = tmp_path / f"img{suffix}"
    rgb = Image.new("RGB", (20, 10), (30, 120, 200))
    image = rgb.convert(mode) if mode != "I;16" else Image.new("I;16", (20, 10), 4000)
    image.save(path)
    loaded = data.load_rgb(path)
    assert loaded.mode == "RGB" and loaded.size == (20, 10)


def test_transparent_pixels_become_white(tmp_path):
    path = tmp_path / "t.png"
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(path)
    assert data.load_rgb(path).getpixel((0, 0)) == (255, 255, 255)


def test_split_is_seeded_stratified_and_disjoint():
    rng = np.random.default_rng(1)
    targets = (rng.random((1000, 80)) < np.linspace(0.3, 0.001, 80)).astype(np.float32)
    targets[:2, 79] = 1  # a class with exactly 2 images
    train, val = split_train_val(targets, 0.1, seed=0)
    assert len(val) == 100 and len(train) == 900
    assert not set(train) & set(val) and sorted(np.concatenate([train, val])) == list(range(1000))
    again_train, again_val = split_train_val(targets, 0.1, seed=0)
    assert np.array_equal(val, again_val) and np.array_equal(train, again_train)
    assert not np.array_equal(val, split_train_val(targets, 0.1, seed=1)[1])
    counts = targets.sum(0)
    assert (targets[val][:, counts >= 2].sum(0) >= 1).all(), "a class with >= 2 images has none in validation"
    assert (targets[train][:, counts >= 2].sum(0) >= 1).all(), "a class lost all its training images"
    # without stratification, a plain random split misses some rare classes
    plain_val = split_train_val(targets, 0.1, seed=0, stratify=False)[1]
    assert (targets[plain_val][:, counts >= 2].sum(0) == 0).any()


def test_kfold_assignments_are_seeded_balanced_and_stratified():
    rng = np.random.default_rng(2)
    targets = (rng.random((1000, 80)) < np.linspace(0.3, 0.002, 80)).astype(np.float32)
    folds = course.kfold_assignments(targets, 5, seed=0)
    assert folds.shape == (1000,) and set(folds) == set(range(5))
    assert np.array_equal(folds, course.kfold_assignments(targets, 5, seed=0))
    assert not np.array_equal(folds, course.kfold_assignments(targets, 5, seed=1))
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 0.1 * 1000 / 5, sizes  # within a few percent of each other
    per_fold = np.stack([targets[folds == k].sum(0) for k in range(5)])  # (folds, classes)
    counts = targets.sum(0)
    # rare classes (the ones whose thresholds need every image) are spread as evenly as the folds allow
    rare = counts < 50
    assert (per_fold.max(0) - per_fold.min(0))[rare].max() <= 2, per_fold[:, rare]
    assert (per_fold[:, counts >= 5] > 0).all(), "a class with >= 5 images is missing from a fold"
    plain = np.random.default_rng(0).permutation(1000) % 5
    plain_per_fold = np.stack([targets[plain == k].sum(0) for k in range(5)])
    assert (plain_per_fold.max(0) - plain_per_fold.min(0))[rare].max() > 2  # what stratification prevents
    with pytest.raises(ValueError, match="n_folds"):
        course.kfold_assignments(targets, 1)


def test_split_round_trip_and_missing_stems(tmp_path):
    stems = [f"s{i:03d}" for i in range(50)]
    targets = np.eye(80, dtype=np.float32)[np.arange(50) % 80]
    train, val = split_train_val(targets, 0.2, seed=3)
    path = tmp_path / "split.json"
    save_split(path, stems, train, val, seed=3)
    loaded_train, loaded_val = load_split(path, stems)
    assert np.array_equal(loaded_train, train) and np.array_equal(loaded_val, val)
    assert json.loads(path.read_text())["seed"] == 3
    with pytest.raises(ValueError, match=r"split\.json: .*stem\(s\) are not in the dataset"):
        load_split(path, stems[:-5])


def test_subsets_have_their_own_transforms(demo_root):
    dirs = course_dirs(demo_root)
    full = COCOTrainImageDataset(dirs["train_images"], dirs["train_labels"])
    train_idx, val_idx = split_train_val(full.targets, 0.25, seed=0)
    train = TransformSubset(full, train_idx, TrainPreset(image_size=48, **HALF))
    val = TransformSubset(full, val_idx, EvalPreset(image_size=48, **HALF))
    assert torch.equal(val[0][0], val[0][0]), "evaluation preset must be deterministic"
    torch.manual_seed(0)
    assert not torch.equal(train[0][0], train[0][0]), "training preset must augment"
    assert torch.equal(val[0][1], torch.from_numpy(full.targets[val_idx[0]]))
    assert np.array_equal(val.targets, full.targets[val_idx]) and val.stems[0] == full.stems[val_idx[0]]


def test_presets_pickle_and_keep_aspect_ratio():
    image = Image.new("RGB", (224, 112), (255, 255, 255))
    for preset in (EvalPreset(image_size=224, **HALF), TrainPreset(image_size=224, **HALF)):
        clone = pickle.loads(pickle.dumps(preset))
        assert clone(image).shape == (3, 224, 224)
    padded = EvalPreset(image_size=224, **HALF)(image)
    white_rows = (padded[0] > 0.99).all(dim=1)
    assert white_rows.sum() == 112 and white_rows[56:168].all(), "pad mode must keep the 2:1 aspect ratio, centred"
    assert (padded[:, :56] == 0).all(), "padding is the mean colour (0 after normalisation)"
    stretched = EvalPreset(image_size=224, mode="stretch", **HALF)(image)
    assert (stretched[0] > 0.99).all()
    with pytest.raises(ValueError, match="mode"):
        EvalPreset(image_size=224, mode="squash", **HALF)


def test_spawn_workers_iterate_a_whole_epoch(demo_root):
    """What Windows and macOS do: workers start with spawn and must unpickle dataset and transform."""
    dirs = course_dirs(demo_root)
    ds = COCOTrainImageDataset(dirs["train_images"], dirs["train_labels"],
                               transform=TrainPreset(image_size=64, **HALF))
    loader = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True, num_workers=2,
                                         multiprocessing_context="spawn")
    seen = 0
    for images, targets in loader:
        assert images.shape[1:] == (3, 64, 64) and targets.shape[1:] == (80,)
        seen += len(images)
    assert seen == len(ds)


def test_find_data_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MSCOCO_ROOT", raising=False)
    assert find_data_root() is None
    with pytest.raises(FileNotFoundError, match="missing"):
        find_data_root(tmp_path / "typo")
    make_layout(tmp_path / "data", {"a": "1\n"})
    monkeypatch.setenv("MSCOCO_ROOT", str(tmp_path / "data"))
    assert find_data_root() == (tmp_path / "data").resolve()
    monkeypatch.setenv("MSCOCO_ROOT", str(tmp_path / "dta"))
    with pytest.raises(FileNotFoundError, match="MSCOCO_ROOT"):
        find_data_root()


def test_nested_zip_folders_are_followed(tmp_path):
    dirs = make_layout(tmp_path / "flat", {"a": "1\n"})
    nested = tmp_path / "nested"
    (nested / "labels").mkdir(parents=True)
    shutil.copytree(dirs["train_labels"], nested / "labels" / "train")
    shutil.copytree(dirs["train_images"], nested / "images" / "train-resized" / "train-resized")
    shutil.copytree(dirs["test_images"], nested / "images" / "test-resized" / "test-resized")
    found = course_dirs(nested)
    assert found["train_images"].name == "train-resized" and found["train_images"].parent.name == "train-resized"
    assert len(COCOTrainImageDataset(found["train_images"], found["train_labels"])) == 1


@pytest.mark.skipif(not COCO_MINI.is_dir(), reason="../shared/coco-mini is not present on this machine")
def test_coco_mini_reads_end_to_end():
    dirs = course_dirs(COCO_MINI)
    train = COCOTrainImageDataset(dirs["train_images"], dirs["train_labels"])
    assert len(train) == 2395 and (train.targets.sum(1) >= 1).all()
    assert (train.targets.sum(0) >= 5).all(), "README: every class has at least 5 training images"
    test = COCOTestImageDataset(dirs["test_images"], transform=EvalPreset(image_size=224, **HALF))
    assert len(test) == 834
    loader = torch.utils.data.DataLoader(test, batch_size=128, num_workers=0)
    assert sum(len(images) for images, _ in loader) == 834
