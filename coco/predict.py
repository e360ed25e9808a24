"""A finished run's test predictions: :func:`predict_run` writes the predictions JSON, :func:`load_run` hands
back a run's model with its thresholds.

Both read the run folder through :class:`coco.run_dir.RunDir`; a run whose backbone was cached predicts through
the same extraction it trained on (``coco.features.predict_cached``), so its thresholds fit the probabilities.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from coco import atomic, course, data, features, loaders, recipe, submission
from coco.config import Config
from coco.engine import predict
from coco.run_dir import RunDir
from coco.runtime import amp_settings, inference_batch_size, resolve_device, uses_channels_last
from coco.thresholds import ThresholdResult


def load_run(run_dir, which: str = "best"):
    """``(model, config, thresholds)`` of a run folder's ``best``, ``last`` or ``final`` (cross-fitted) checkpoint
    (``auto``: ``final`` where the run was cross-fitted, else ``best``), model in eval mode.

    The model carries the weights that were evaluated (the EMA weights when the run used an EMA), so the
    stored thresholds fit it; ``thresholds`` is a ``ThresholdResult``. No pretrained download needed.
    """
    run_dir = RunDir(run_dir)
    which = run_dir.resolve_checkpoint(which)
    checkpoint = run_dir.load_checkpoint(which)
    config = Config.from_dict(checkpoint["config"])
    class_names = list(checkpoint["class_names"])
    if class_names != list(course.CLASSES):
        raise ValueError(f"{run_dir.checkpoint_path(which)}: its class names differ from course.CLASSES")
    model = recipe.build_net(config, num_classes=len(class_names), pretrained=False)  # weights come from the file
    weights = checkpoint["ema"]["module"] if checkpoint.get("ema") else checkpoint["model"]
    model.load_state_dict(weights)
    model.eval()
    return model, config, ThresholdResult.from_dict(checkpoint["thresholds"])


# ----------------------------------------------------------------------------------------------------------
# Predictions for the test images
# ----------------------------------------------------------------------------------------------------------
def predict_run(run_dir, out_path, *, data_root=None, which: str = "auto", device: str | None = None,
                batch_size: int | None = None, num_workers: int | None = None, progress: bool = True,
                skip_bad_files: bool = False) -> dict:
    """Predict the test images of ``data_root`` (default: the run's; only its ``images/test-resized`` is needed)
    with a run's checkpoint and its tuned thresholds; write the JSON (validated against the test folder's stems)
    atomically to ``out_path`` (a file name: a name ending in a slash, a folder or a read-only file is refused
    before any inference).

    A run trained on a feature cache predicts through the same extraction (``features.predict_cached``), so its
    thresholds fit the probabilities. ``skip_bad_files``: unreadable test images get no label instead of stopping
    the prediction. Returns a summary dict: ``path``, ``images``, ``mean_labels``, ``empty`` (images with no
    label), ``global_threshold``, ``at_least_one``, ``checkpoint``, ``skipped`` (unreadable test images, given
    no label).
    """
    started = time.perf_counter()
    atomic.check_writable(out_path)  # before the inference, not after it
    out_path = Path(out_path)
    atomic.remove_stale_temps(out_path.parent, out_path.name)
    which = RunDir(run_dir).resolve_checkpoint(which)
    model, config, thresholds = load_run(run_dir, which)
    device = resolve_device(device or config.device)
    root = course.find_data_root(data_root or config.data_root, parts=("test_images",))
    if root is None:
        raise FileNotFoundError("no course data: pass --data-root, or set $MSCOCO_ROOT")
    test_set = data.COCOTestImageDataset(course.course_dirs(root)["test_images"], check_images=config.check_images,
                                         skip_unreadable=skip_bad_files, progress=progress)
    _, eval_tf = recipe.presets_for(config)
    batch_size = batch_size or inference_batch_size(device, eval_tf.image_size, config.batch_size)
    if config.cache_stages > 0:
        model.to(device, memory_format=torch.channels_last if uses_channels_last(device, config.channels_last)
                 else torch.preserve_format)  # the tail as the run evaluated it
        probs = features.predict_cached(model, config, test_set, device, batch_size=batch_size,
                                        num_workers=num_workers, progress=progress)
        stems = list(test_set.stems)
    else:
        test_set.transform = eval_tf
        channels_last = uses_channels_last(device, config.channels_last)
        model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        loader = loaders.make_loader(test_set, batch_size=batch_size, device=device, train=False, mode="workers",
                                      num_workers=num_workers, channels_last=channels_last)
        out = predict(model, loader, device, amp_dtype=amp_settings(device, config.amp)[0],
                      channels_last=channels_last, tta_hflip=config.tta_hflip, progress=progress)
        probs, stems = out["probs"], out["stems"]
    preds = thresholds.apply(probs)
    predictions = {**submission.predictions_to_dict(stems, preds), **{stem: [] for stem in test_set.skipped}}
    path = submission.write_predictions(out_path, predictions, expected_stems=[*test_set.stems, *test_set.skipped])
    return {"path": str(path), "images": len(predictions), "mean_labels": float(preds.sum()) / len(predictions),
            "empty": int((preds.sum(axis=1) == 0).sum()) + len(test_set.skipped),
            "global_threshold": thresholds.global_threshold, "at_least_one": thresholds.at_least_one,
            "checkpoint": RunDir(run_dir).checkpoint_path(which).name, "skipped": len(test_set.skipped),
            "time_s": time.perf_counter() - started}
