"""The fast input pipeline: cache round trip and staleness, cached == uncached, the batched (GPU) path
on the CPU == the per-image DataLoader path, and the benchmark command end to end."""
import json
import os
import pickle
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from coco import bench, image_cache, loaders, networks, runtime
from coco.course import course_dirs
from coco.data import COCOTestImageDataset, COCOTrainImageDataset, TransformSubset, load_rgb
from coco.gpu_batches import BatchLoader, batch_transform, pack_images
from coco.image_cache import CachedImageDataset, ImageCache, cache_dataset
from coco.loaders import DeviceLoader, make_loader
from coco.runtime import derived_seed
from coco.transforms import EvalPreset, TrainPreset

# pipeline.py silences torchvision 0.29's deprecation of decode_jpeg for normal runs; pytest resets filters
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
NORM = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory):
    """A course folder whose images cover what load_rgb converts: RGB, grayscale and CMYK JPEGs,
    a transparent PNG; portrait, landscape and square; smaller and larger than the presets' sizes."""
    root = tmp_path_factory.mktemp("mixed") / "ms-coco"
    dirs = course_dirs(root)
    for path in dirs.values():
        path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    specs = [("RGB", (96, 72), "jpg"), ("RGB", (72, 96), "jpg"), ("L", (80, 80), "jpg"), ("CMYK", (96, 64), "jpg"),
             ("RGBA", (60, 90), "png"), ("RGB", (120, 50), "jpg"), ("RGB", (33, 47), "jpg"), ("RGB", (96, 96), "png")]
    for k, (mode, size, ext) in enumerate(specs):
        pixels = rng.integers(0, 256, size=(size[1], size[0], 4), dtype=np.uint8)
        image = Image.fromarray(pixels, "RGBA").convert(mode)
        image.save(dirs["train_images"] / f"{k:03d}.{ext}")
        (dirs["train_labels"] / f"{k:03d}.cls").write_text(f"{k}\n{k + 10}\n")
        image.convert("RGB").save(dirs["test_images"] / f"t{k:03d}.jpg")
    return root


def train_dataset(root):
    dirs = course_dirs(root)
    return COCOTrainImageDataset(dirs["train_images"], dirs["train_labels"])


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["jpeg", "decoded"])
def test_cache_pixels_equal_load_rgb_for_every_image_kind(mixed_root, mode):
    dataset = train_dataset(mixed_root)
    cache = ImageCache.build(dataset.image_paths, mode, verbose=False)
    assert cache.mode == mode and len(cache) == len(dataset)
    assert cache.gpu_decodable.tolist() == [True, True, False, False, False, True, True, False]  # L, CMYK, PNGs: CPU
    for i, path in enumerate(dataset.image_paths):
        expected = np.asarray(load_rgb(path))
        assert np.array_equal(np.asarray(cache.pil(i)), expected), path.name
        assert np.array_equal(cache.pixels(i).numpy(), expected), path.name
        assert tuple(cache.shapes[i]) == expected.shape[:2]


def test_cache_save_load_round_trip_and_stale_detection(demo_root, tmp_path, capsys):
    dataset = train_dataset(demo_root)
    cache = ImageCache.build(dataset.image_paths, "jpeg", verbose=False)
    assert cache.nbytes == sum(p.stat().st_size for p in dataset.image_paths)
    path = tmp_path / "cache" / "train-jpeg.pt"
    cache.save(path)
    assert not path.with_name(path.name + ".tmp").exists()
    loaded = ImageCache.load(path, dataset.image_paths)
    assert loaded.mode == "jpeg" and loaded.names == cache.names
    assert torch.equal(loaded.buffer, cache.buffer) and np.array_equal(loaded.offsets, cache.offsets)

    # a file rewritten (new size and time) makes the saved cache stale: load names it ...
    changed = dataset.image_paths[7]
    Image.new("RGB", (50, 40), (1, 2, 3)).save(changed)
    os.utime(changed, ns=(1, 1))
    with pytest.raises(ValueError, match=f"stale cache, 1 image.*{changed.name}"):
        ImageCache.load(path, dataset.image_paths)
    # ... and cache_dataset rebuilds it with a message, saves it, and serves the new pixels
    cached = cache_dataset(dataset, "jpeg", path)
    assert "stale cache" in capsys.readouterr().err
    assert np.array_equal(np.asarray(cached.load_image(7)), np.asarray(load_rgb(changed)))
    assert ImageCache.load(path, dataset.image_paths).file_sizes[7] == changed.stat().st_size
    # a missing image is stale too
    with pytest.raises(ValueError, match="image list differs"):
        ImageCache.load(path, dataset.image_paths[:-1])
    # asking for another mode than the saved one rebuilds instead of silently using it
    assert cache_dataset(dataset, "decoded", path).cache.mode == "decoded"
    assert "rebuilding" in capsys.readouterr().err
    # so does a file that is not a cache at all
    path.write_bytes(b"not a cache")
    assert len(cache_dataset(dataset, "auto", path)) == len(dataset)
    assert "not a readable cache file" in capsys.readouterr().err
    assert ImageCache.load(path, dataset.image_paths).mode == "decoded"


def test_auto_mode_keeps_jpeg_bytes_for_the_gpu(mixed_root, monkeypatch):
    paths = train_dataset(mixed_root).image_paths
    assert ImageCache.build(paths, "auto", verbose=False).mode == "decoded"  # tiny: fits in RAM
    monkeypatch.setattr(image_cache, "available_memory_bytes", lambda: 1000)
    assert ImageCache.build(paths, "auto", verbose=False).mode == "jpeg"  # does not fit
    monkeypatch.undo()
    assert ImageCache.build(paths, "auto", device="cuda", verbose=False).mode == "jpeg"  # nvJPEG decodes


@pytest.mark.parametrize("mode", ["jpeg", "decoded"])
def test_cached_and_uncached_datasets_yield_identical_images_and_labels(mixed_root, mode):
    dataset = train_dataset(mixed_root)
    cached = cache_dataset(dataset, mode, verbose=False)
    cached = pickle.loads(pickle.dumps(cached))  # what a spawn DataLoader worker receives
    assert isinstance(cached, CachedImageDataset) and cached.stems == dataset.stems
    indices = [6, 0, 3, 2, 7]
    for preset in (EvalPreset(image_size=64, **NORM), TrainPreset(image_size=64, **NORM)):
        plain, fast = TransformSubset(dataset, indices, preset), TransformSubset(cached, indices, preset)
        for i in range(len(indices)):
            random.seed(i)  # TrainPreset draws from Python's random module
            image, target = plain[i]
            random.seed(i)
            cached_image, cached_target = fast[i]
            assert torch.equal(image, cached_image) and torch.equal(target, cached_target)
    assert np.array_equal(TransformSubset(cached, indices).targets, dataset.targets[indices])


# --------------------------------------------------------------------------------------------
# The batched presets and the gpu path, run on the CPU
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", [
    TrainPreset(image_size=64, **NORM),                       # shrinks (antialiased)
    TrainPreset(image_size=128, hflip=1.0, **NORM),           # enlarges, always flipped
    TrainPreset(image_size=96, color_jitter=0.0, **NORM),
    EvalPreset(image_size=96, **NORM), EvalPreset(image_size=80, mode="crop", **NORM),
    EvalPreset(image_size=112, mode="stretch", **NORM),
], ids=repr)
def test_batch_transform_equals_the_per_image_preset(mixed_root, preset):
    images = [TF.pil_to_tensor(load_rgb(p)) for p in train_dataset(mixed_root).image_paths]
    rng = random.Random(3)
    params = [preset.sample_params(*image.shape[-2:], rng) for image in images] \
        if isinstance(preset, TrainPreset) else None
    expected = torch.stack([preset.apply(image, p) if params else preset(image)
                            for image, p in zip(images, params or [None] * len(images))])
    batch, sizes = pack_images(images)
    result = batch_transform(batch, sizes, preset, params)
    assert result.shape == expected.shape == (len(images), 3, preset.image_size, preset.image_size)
    assert torch.equal(result, expected)
    assert batch_transform(batch, sizes, preset, params, channels_last=True).is_contiguous(
        memory_format=torch.channels_last)


@pytest.mark.parametrize("mode", ["jpeg", "decoded"])
def test_gpu_path_on_cpu_equals_the_dataloader_path(demo_root, mode):
    dataset = train_dataset(demo_root)
    cached = cache_dataset(dataset, mode, verbose=False)
    indices = np.arange(10, 110)
    preset = TrainPreset(image_size=80, **NORM)
    fast = make_loader(TransformSubset(cached, indices, preset), batch_size=32, device="cpu", train=True,
                       seed=5, mode="gpu")
    assert isinstance(fast, BatchLoader) and len(fast) == 3  # drop_last: 100 // 32
    plain = make_loader(TransformSubset(dataset, indices, preset), batch_size=32, device="cpu", train=True, seed=5,
                        mode="workers", num_workers=0)
    assert isinstance(plain, DeviceLoader) and len(plain) == 3
    batches = list(fast)
    random.seed(derived_seed(5, 0))  # the per-image path draws the same parameters in the same shuffled order
    assert len(batches) == 3
    for (images, targets), (expected_images, expected_targets) in zip(batches, plain):
        assert torch.equal(images, expected_images) and torch.equal(targets, expected_targets)
    # the next epoch draws new parameters
    assert not torch.equal(next(iter(fast))[0], batches[0][0])


def test_gpu_path_shuffles_test_images_with_their_stems_and_prefetches_the_same(demo_root):
    dirs = course_dirs(demo_root)
    test_set = cache_dataset(COCOTestImageDataset(dirs["test_images"]), "jpeg", verbose=False)
    test_set.transform = preset = EvalPreset(image_size=96, **NORM)
    loader = BatchLoader(test_set, batch_size=16, device="cpu", shuffle=True, drop_last=False, seed=1)
    threaded = BatchLoader(test_set, batch_size=16, device="cpu", shuffle=True, drop_last=False, seed=1, prefetch=2)
    seen = []
    for (images, stems), (threaded_images, threaded_stems) in zip(loader, threaded):
        assert stems == threaded_stems and torch.equal(images, threaded_images)
        for image, stem in zip(images, stems):
            assert torch.equal(image, preset(load_rgb(dirs["test_images"] / f"{stem}.jpg")))
        seen += stems
    assert sorted(seen) == test_set.stems and seen != test_set.stems  # every image once, shuffled
    for _ in threaded:  # leaving a prefetching epoch early stops its thread
        break
    assert len(list(threaded)) == 4


def test_make_loader_chooses_and_refuses_paths(demo_root):
    dataset = train_dataset(demo_root)
    preset = EvalPreset(image_size=96, **NORM)
    subset = TransformSubset(dataset, np.arange(40), preset)
    loader = make_loader(subset, batch_size=16, device="cpu", train=False, channels_last=True)
    assert isinstance(loader, DeviceLoader) and loader.loader.num_workers == runtime.loader_settings("cpu")[
        "num_workers"]
    images, targets = next(iter(loader))
    assert images.is_contiguous(memory_format=torch.channels_last) and len(loader) == 3
    assert torch.equal(images, torch.stack([subset[i][0] for i in range(16)]))
    with pytest.raises(ValueError, match="cache_dataset"):
        make_loader(subset, batch_size=16, device="cpu", train=False, mode="gpu")
    # any other dataset (e.g. precomputed features) takes the DataLoader path
    features = torch.utils.data.TensorDataset(torch.randn(10, 4), torch.ones(10, 80))
    assert len(make_loader(features, batch_size=4, device="cpu", train=True)) == 2
    assert runtime.loader_settings("cpu", n_cpus=2)["num_workers"] == 0
    assert runtime.loader_settings("cpu", n_cpus=16)["num_workers"] == 4
    assert runtime.loader_settings("cuda", n_cpus=16) == {
        "num_workers": 8, "pin_memory": True, "persistent_workers": True, "prefetch_factor": 4}


def test_epoch_sampler_depends_only_on_seed_and_epoch():
    first, second = loaders.EpochShuffleSampler(50, seed=3), loaders.EpochShuffleSampler(50, seed=3)
    first.set_epoch(0)
    list(first)
    first.set_epoch(4)
    second.set_epoch(4)
    assert list(first) == list(second) and sorted(first) == list(range(50))
    second.set_epoch(5)
    assert list(first) != list(second)


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------
class TinyNet(torch.nn.Module):
    """A stand-in for the zoo so that the benchmark test takes seconds."""

    def __init__(self):
        super().__init__()
        self.spec = SimpleNamespace(mean=NORM["mean"], std=NORM["std"], input_size=224)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=4), torch.nn.BatchNorm2d(8),
                                            torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(8, 80)

    def forward(self, images):
        return self.head(self.features(images))


def test_bench_prints_one_json_object_with_the_required_keys(tmp_path, monkeypatch, capsys):

    built = []
    monkeypatch.setattr(networks, "build_model", lambda name, pretrained=True, **kw: built.append(
        (name, pretrained)) or TinyNet())
    status = bench.bench_main(["--device", "cpu", "--json", "--images", "100", "--test-images", "40",
                                  "--batch-size", "16", "--image-size", "96", "--max-seconds", "1",
                                  "--work-dir", str(tmp_path), "--model", "shufflenet_v2_x1_0"])
    printed = json.loads(capsys.readouterr().out)  # exactly one JSON object on stdout
    assert status == 0 and built == [("shufflenet_v2_x1_0", False)]
    for key in ("pipeline_ips", "step_ips", "end_to_end_ips", "inference_ips", "end_to_end_over_step", "peak_mem_mb"):
        assert isinstance(printed[key], float) and printed[key] > 0, key
    assert printed["device"].startswith("cpu")
    assert printed["end_to_end_over_step"] == pytest.approx(printed["end_to_end_ips"] / printed["step_ips"], rel=0.01)
    assert printed["train_images"] == 100 and printed["test_images"] == 40
    # the generated data: course layout, long side 224, one label file per image
    data = course_dirs(tmp_path / "bench-100-40")
    images = sorted(data["train_images"].glob("*.jpg"))
    assert len(images) == 100 and len(list(data["train_labels"].glob("*.cls"))) == 100
    assert max(Image.open(images[0]).size) == 224
