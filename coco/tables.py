"""The notebook's tables and the numbers its sentences quote, read from run folders (``coco.run_dir``).

Class frequencies and the metric's weights, split coverage, the configuration, the network's stages and what
trains when, the learning-rate schedule, threshold steps and their held-out worth, cross-fitting on mock test
sets, per-class analysis (difficulty, frequency bands, look-alike confusions), prediction statistics, the runs
of a folder, and the comparative study (``study/results.csv``). Pandas DataFrames; nothing is typed by hand.
"""
from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from coco import course, fit, leaderboard, networks, recipe
from coco.config import RESUME_MUTABLE, TUNE_MIN_POSITIVES, Config
from coco.course import CLASSES
from coco.run_dir import RunDir, list_runs
from coco.thresholds import (
    f1_by_rule,
    held_out_gains,
    mock_test_scores,
    tune_thresholds,
)

STUDY_CSV = Path(__file__).resolve().parents[1] / "study" / "results.csv"
FRONTIER_CSV = STUDY_CSV.with_name("frontier.csv")  # written by python -m study.frontier
STUDY_COLUMNS = ("protocol", "recipe", "command", "hardware", "wall_time_s", "val_f1", "f1_se", "val_map", "notes")

# Classes whose members look alike or share scenes; the notebook asks whether one is predicted when only a
# sibling is in the image. Names must be course.CLASSES entries (checked at import).
LOOKALIKE_GROUPS: dict[str, tuple[str, ...]] = {
    "cutlery": ("fork", "knife", "spoon"),
    "drinkware": ("cup", "wine glass", "bottle"),
    "seating": ("couch", "chair", "bed"),
    "road vehicles": ("car", "truck", "bus"),
    "livestock": ("sheep", "cow", "horse"),
    "screens": ("tv", "laptop", "cell phone"),
}
for _group, _names in LOOKALIKE_GROUPS.items():
    _unknown = [name for name in _names if name not in CLASSES]
    if _unknown:
        raise ValueError(f"LOOKALIKE_GROUPS[{_group!r}]: {_unknown} not in course.CLASSES")



def leaderboard_weights(class_counts) -> np.ndarray:
    """The leaderboard metric's class weights for these positive counts: (1/n_c) / sum_k (1/n_k).

    Computed by the leaderboard's own function (a class with no positives gets 0), so the notebook shows exactly
    the weights the scorer uses.
    """
    return leaderboard.class_weights(np.asarray(class_counts, dtype=np.float64))


def _as_numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def class_table(targets, train_idx=None, val_idx=None) -> pd.DataFrame:
    """One row per class (course order): images, share of images, leaderboard weight (from these counts),
    and, given a split, its training and validation images."""
    targets = _as_numpy(targets) > 0
    counts = targets.sum(axis=0)
    frame = pd.DataFrame({"class": list(CLASSES), "images": counts, "share": counts / len(targets),
                          "weight": leaderboard_weights(counts)})
    if train_idx is not None and val_idx is not None:
        frame["train"] = targets[train_idx].sum(axis=0)
        frame["val"] = targets[val_idx].sum(axis=0)
    return frame.set_index("class")


def weight_facts(table: pd.DataFrame, k: int = 2) -> dict:
    """Numbers for the notebook's sentence on the leaderboard weights."""
    by_weight = table.sort_values("weight", ascending=False)
    rarest = by_weight.head(k)
    commonest = table["images"].idxmax()
    return {"rarest": list(rarest.index), "rarest_images": [int(v) for v in rarest["images"]],
            "rarest_share": float(rarest["weight"].sum()),
            "top10_share": float(by_weight["weight"].head(10).sum()),
            "commonest": commonest, "commonest_images": int(table.loc[commonest, "images"]),
            "commonest_share": float(table.loc[commonest, "weight"]),
            "ratio": float(by_weight["weight"].iloc[0] / table.loc[commonest, "weight"])}


def split_coverage(targets, val_fraction: float, seed: int, min_positives: int = TUNE_MIN_POSITIVES) -> dict:
    """The stratified split the run uses against a plain random split of the same size: validation images of
    each class (arrays in course order), how many classes each leaves without a validation image and how many
    with fewer than ``min_positives`` (too few for a per-class threshold)."""
    targets = _as_numpy(targets) > 0
    out = {}
    for name, stratify in (("stratified", True), ("random", False)):
        train_idx, val_idx = course.split_train_val(targets, val_fraction, seed, stratify)
        val_counts = targets[val_idx].sum(axis=0)
        out[name] = {"train_idx": train_idx, "val_idx": val_idx, "val_counts": val_counts,
                     "classes_without_val": int((val_counts == 0).sum()),
                     "classes_under_min": int((val_counts < min_positives).sum())}
    out["total_counts"] = targets.sum(axis=0)
    return out


# ----------------------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------------------
def config_table(config) -> pd.DataFrame:
    """Every Config field: value, Config's default, whether the preset/overrides changed it, help text."""
    defaults = Config()
    rows = []
    for f in dataclasses.fields(Config):
        value, default = getattr(config, f.name), getattr(defaults, f.name)
        rows.append({"field": f.name, "value": value, "default": default,
                     "changed": "yes" if value != default else "", "help": f.metadata.get("help", "")})
    return pd.DataFrame(rows).set_index("field")


def config_changes(config) -> pd.DataFrame:
    """The Config fields this run sets differently from Config's defaults, which ARE the ``shufflenet`` recipe
    (where and how it runs, such as data_root or progress, left out), with their help text."""
    defaults = Config()
    rows = [{"field": f.name, "this run": getattr(config, f.name), "default (shufflenet recipe)": getattr(defaults, f.name),
             "meaning": f.metadata.get("help", "")}
            for f in dataclasses.fields(Config)
            if f.name not in RESUME_MUTABLE and getattr(config, f.name) != getattr(defaults, f.name)]
    frame = pd.DataFrame(rows, columns=["field", "this run", "default (shufflenet recipe)", "meaning"])
    return frame.set_index("field").astype(str)


def param_group_table(optimizer) -> pd.DataFrame:
    """The optimiser's parameter groups: name, peak learning rate, weight decay, tensors and parameters."""
    rows = [{"group": group.get("name", str(index)), "lr": group["lr"], "weight decay": group["weight_decay"],
             "tensors": len(group["params"]), "parameters": sum(p.numel() for p in group["params"])}
            for index, group in enumerate(optimizer.param_groups)]
    return pd.DataFrame(rows).set_index("group")


def stage_table(model, image_size: int) -> pd.DataFrame:
    """Stages, pool and head of a MultiLabelNet: what they hold, output shape at ``image_size``, parameters."""
    rows = []
    feats = torch.zeros(1, 3, image_size, image_size)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for index, stage in enumerate(model.stages):
            feats = stage(feats)
            kinds = Counter(type(child).__name__ for child in stage.children())
            rows.append({"part": f"stage {index}", "holds": ", ".join(f"{n}x {k}" for k, n in kinds.items()),
                         "output": "x".join(str(d) for d in feats.shape[1:]),
                         "parameters": sum(p.numel() for p in stage.parameters())})
        pooled = model.pool(feats)
        kind = "global average and max pools side by side" if getattr(model.pool, "mode", "avg") == "avgmax" \
            else "global average pool"
        rows.append({"part": "pool", "holds": kind, "output": str(pooled.shape[1]),
                     "parameters": sum(p.numel() for p in model.pool.parameters())})
        logits = model.head(pooled)
        rows.append({"part": "head", "holds": " -> ".join(type(m).__name__ for m in model.head),
                     "output": f"{logits.shape[1]} logits", "parameters": sum(p.numel() for p in model.head.parameters())})
    model.train(was_training)
    return pd.DataFrame(rows).set_index("part")


def freeze_schedule(model, config) -> pd.DataFrame:
    """Which parts train in which epochs, asked of recipe.set_trainable, the rule fit.fit follows (on a copy of
    ``model``)."""
    probe = copy.deepcopy(model)
    rows, previous = [], None
    for epoch in range(config.epochs):
        trains = recipe.set_trainable(probe, config, epoch)
        counts = networks.count_parameters(probe)
        if previous is not None and previous["trains"] == trains:
            previous["epochs"] = f"{previous['first']}-{epoch + 1}"
            continue
        previous = {"first": epoch + 1, "epochs": str(epoch + 1), "trains": trains,
                    "trainable parameters": counts["trainable"], "frozen parameters": counts["total"] - counts["trainable"]}
        rows.append(previous)
    frame = pd.DataFrame(rows).drop(columns="first").set_index("epochs")
    return frame


# ----------------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------------
def history_frame(run_dir) -> pd.DataFrame:
    """The run's per-epoch metrics (``RunDir.history``) as a table indexed by epoch."""
    rows = RunDir(run_dir).history()
    if not rows:
        raise FileNotFoundError(f"{RunDir(run_dir).history_path}: no per-epoch metrics (did the run finish an epoch?)")
    return pd.DataFrame(rows).set_index("epoch")


def lr_schedule(config, n_train: int) -> pd.DataFrame:
    """Learning rates of the head and the backbone after every optimiser step, from the scheduler that
    fit.fit builds (recipe.make_scheduler, a fresh cycle at the unfreeze milestone); index: epochs
    (fractional). ``n_train``: training images of the run."""
    per_epoch = recipe.steps_per_epoch(n_train, config.batch_size)
    head, backbone = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    peak_lrs = [config.lr, config.lr * config.backbone_lr_mult]
    optimizer = torch.optim.AdamW([{"params": [head], "lr": peak_lrs[0]}, {"params": [backbone], "lr": peak_lrs[1]}])
    rows = []
    scheduler = None
    for epoch in range(config.epochs):
        if epoch == 0 or epoch == config.freeze_epochs:
            scheduler = recipe.make_scheduler(optimizer, peak_lrs, config, per_epoch, epoch)
        for _ in range(per_epoch):
            rows.append([group["lr"] for group in optimizer.param_groups])
            optimizer.step()  # no gradients: nothing changes; keeps the scheduler's order-of-calls check quiet
            if scheduler is not None:
                scheduler.step()
    rows.append([group["lr"] for group in optimizer.param_groups])  # after the last step
    return pd.DataFrame(rows, columns=["head", "backbone"], index=np.arange(len(rows)) / per_epoch)


# ----------------------------------------------------------------------------------------------------------
# thresholds
# ----------------------------------------------------------------------------------------------------------
def validation_outputs(run_dir, data_root=None) -> dict:
    """What a run saved about its selected model's validation pass (``val_outputs.npz``, ``thresholds.json``,
    ``split.json``, ``config.json``), with the dataset the split indexes, for the notebook's analysis.

    Returns a dict: ``config``, ``thresholds`` (ThresholdResult), ``epoch`` (of best.pt), ``source``
    (the untransformed dataset), ``train_idx``, ``val_idx`` (rows of ``source``), ``probs`` and ``targets``
    (numpy, validation rows in ``val_idx`` order). Nothing is recomputed: these are the probabilities the
    thresholds were tuned on.
    """
    run_dir = RunDir(run_dir)
    config = run_dir.config()
    root = course.find_data_root(data_root or config.data_root)
    if root is None:
        raise FileNotFoundError(f"{run_dir}: no data root given and the run's ({config.data_root}) is not found")
    source = fit.labelled_images(config.replace(data_root=str(root)))
    train_idx, val_idx = run_dir.split(source.stems)
    if not run_dir.val_outputs_path.is_file():
        raise FileNotFoundError(f"{run_dir.val_outputs_path} not found: the run has not finished an epoch")
    saved = run_dir.val_outputs()
    if saved["stems"] != [source.stems[i] for i in val_idx]:
        raise ValueError(f"{run_dir.val_outputs_path}: its validation images are not those of {run_dir.split_path}")
    return {"config": config, "thresholds": run_dir.thresholds("best"), "epoch": saved["epoch"], "source": source,
            "train_idx": train_idx, "val_idx": val_idx, "probs": saved["probs"].astype(np.float64),
            "targets": saved["targets"]}


STEP_NAMES = {"0.5": "threshold 0.5 for every class", "global": "best single threshold",
              "per_class": "per-class thresholds", "final": "+ at-least-one rule (if kept)"}


def threshold_table(probs, targets, thresholds, config, repeats: int = 10) -> pd.DataFrame:
    """What each tuning step is worth, in-sample and held out; one row per rule (0.5, global, per_class, final).

    * ``in-sample F1``: the run's stored thresholds applied to ``probs``, i.e. scored on the very images they
      were tuned on (optimistic); ``in-sample gain``: its gain over the 0.5 row.
    * ``held-out gain`` (mean, std, standard error): ``held_out_gains``, thresholds tuned afresh on one
      stratified half and scored on the other against 0.5 on that same half.
    * ``expected F1``: the 0.5 row's F1 (nothing fitted) plus the held-out gain: an estimate for new images.
    """
    in_sample = pd.Series(f1_by_rule(probs, targets, thresholds))
    gains = pd.DataFrame(held_out_gains(probs, targets, repeats=repeats, **config.tuning_options()))
    frame = pd.DataFrame({"step": [STEP_NAMES[k] for k in in_sample.index], "in-sample F1": in_sample,
                          "in-sample gain": in_sample - in_sample["0.5"], "held-out gain": gains.mean(),
                          "held-out gain (std)": gains.std(),
                          # The halves overlap and the two directions share a split, so this understates the noise.
                          "held-out gain (se)": gains.std() / np.sqrt(len(gains))})
    frame["expected F1"] = in_sample["0.5"] + frame["held-out gain"]
    return frame


def cross_fit_table(run_dir, config, test_size: int, repeats: int = 10) -> pd.DataFrame | None:
    """The cross-fitted thresholds (``Config.cross_fit_folds``) judged on images they were not tuned on
    (``mock_test_scores`` on the run's ``oof.npz``): the mean over mock test sets of ``test_size``
    images, their spread, and first the in-sample figure (tuned and scored on all images). None when the run
    was not cross-fitted.
    """
    saved = RunDir(run_dir).oof_outputs()
    if saved is None:
        return None
    probs, targets = saved["probs"], saved["targets"]
    tuning = config.tuning_options()
    result = tune_thresholds(probs, targets, **tuning)
    in_sample = {**f1_by_rule(probs, targets, result), "mAP": leaderboard.mean_average_precision(probs, targets),
                 "labels_per_image": float(result.apply(probs).sum(axis=1).mean())}
    held = pd.DataFrame(mock_test_scores(probs, targets, test_size, repeats=repeats, **tuning))
    n_test = min(len(probs) - 1, max(1, round(len(probs) * test_size / len(probs))))
    frame = pd.DataFrame({f"in-sample: tuned and scored on all {len(probs):,} images": pd.Series(in_sample),
                          f"held out: tuned on {len(probs) - n_test:,}, scored on {n_test:,} (mean)": held.mean(),
                          "held out: spread over the mock test sets (std)": held.std()}).T
    return frame.rename(columns={key: STEP_NAMES.get(key, key) for key in frame.columns})


# ----------------------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------------------
def _group_of() -> dict[int, str]:
    return {CLASSES.index(name): group for group, names in LOOKALIKE_GROUPS.items() for name in names}


def per_class_frame(probs, targets, thresholds, train_targets, all_targets=None) -> pd.DataFrame:
    """leaderboard.per_class_table with the run's thresholds, plus: ``train_images`` (training split positives),
    ``weight`` (leaderboard weight on this validation set), ``clutter`` (mean labels per image among the
    images holding the class, over ``all_targets``), ``group`` (look-alike group). Indexed by class name."""
    table = pd.DataFrame(leaderboard.per_class_table(probs, targets, thresholds.class_thresholds,
                                                 at_least_one=thresholds.at_least_one)).set_index("name")
    train_targets = _as_numpy(train_targets) > 0
    all_targets = train_targets if all_targets is None else _as_numpy(all_targets) > 0
    table["train_images"] = train_targets.sum(axis=0)
    table["weight"] = leaderboard_weights(table["support"].to_numpy())
    labels_per_image = all_targets.sum(axis=1)
    holders = all_targets.sum(axis=0)
    table["clutter"] = np.divide(all_targets.T.astype(np.float64) @ labels_per_image, holders,
                                 out=np.full(len(holders), np.nan), where=holders > 0)
    groups = _group_of()
    table["group"] = [groups.get(i, "") for i in range(len(table))]
    return table


def difficulty_factors(frame: pd.DataFrame) -> pd.DataFrame:
    """Spearman rank correlation of per-class F1 and AP with candidate explanations, over the classes that
    have validation images: training frequency, validation positives and clutter (labels per image)."""
    present = frame[frame["support"] > 0]
    factors = {"training images": "train_images", "validation images": "support",
               "clutter": "clutter"}
    rows = []
    for label, column in factors.items():
        rows.append({"factor": label,
                     "Spearman rho with F1": present["f1"].corr(present[column], method="spearman"),
                     "Spearman rho with AP": present["ap"].corr(present[column], method="spearman"),
                     "classes": len(present)})
    return pd.DataFrame(rows).set_index("factor")


def frequency_bands(frame: pd.DataFrame, bands: int = 4) -> pd.DataFrame:
    """Classes in ``bands`` groups of training frequency (commonest first): mean F1/precision/recall/AP and the
    share of the leaderboard weight the band carries on this validation set."""
    present = frame[frame["support"] > 0].sort_values("train_images", ascending=False)
    labels = np.array_split(np.arange(len(present)), bands)
    rows = []
    for number, positions in enumerate(labels, start=1):
        part = present.iloc[positions]
        rows.append({"band": f"{number}: {part['train_images'].max()}-{part['train_images'].min()} images",
                     "classes": len(part), "mean F1": part["f1"].mean(), "mean precision": part["precision"].mean(),
                     "mean recall": part["recall"].mean(), "mean AP": part["ap"].mean(),
                     "weight share": part["weight"].sum()})
    return pd.DataFrame(rows).set_index("band")


def strongest_weakest(frame: pd.DataFrame, n: int = 5, min_support: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``n`` best and worst classes by F1 (ties broken by AP) among those with ``min_support`` validation images."""
    columns = ["f1", "precision", "recall", "ap", "support", "train_images", "clutter", "threshold", "group"]
    present = frame[frame["support"] >= min_support].sort_values(["f1", "ap"], ascending=False)[columns]
    return present.head(n), present.tail(n).iloc[::-1]


def lookalike_confusion(preds, targets, groups: Mapping[str, Sequence[str]] = LOOKALIKE_GROUPS) -> pd.DataFrame:
    """For each class c of each group: how often c is predicted on images that hold a sibling but not c
    (``false alarm | sibling``), against images holding no group member (``false alarm | none``); their ratio
    (``lift``); and c's recall. Counts of the images behind each rate are given."""
    preds = _as_numpy(preds) > 0
    targets = _as_numpy(targets) > 0
    rows = []
    for group, names in groups.items():
        members = [CLASSES.index(name) for name in names]
        any_member = targets[:, members].any(axis=1)
        for c in members:
            siblings = [m for m in members if m != c]
            with_sibling = targets[:, siblings].any(axis=1) & ~targets[:, c]
            none = ~any_member
            rate_sibling = preds[with_sibling, c].mean() if with_sibling.any() else np.nan
            rate_none = preds[none, c].mean() if none.any() else np.nan
            if np.isnan(rate_sibling) or np.isnan(rate_none) or rate_sibling == rate_none == 0:
                lift = np.nan
            else:  # never predicted without a sibling but sometimes with one: an infinite lift, kept as such
                lift = rate_sibling / rate_none if rate_none > 0 else np.inf
            holders = targets[:, c]
            rows.append({"group": group, "class": CLASSES[c], "images with a sibling only": int(with_sibling.sum()),
                         "false alarms there": int(preds[with_sibling, c].sum()),
                         "false alarm | sibling": rate_sibling, "false alarm | none": rate_none,
                         "lift": lift,
                         "positives": int(holders.sum()),
                         "recall": preds[holders, c].mean() if holders.any() else np.nan})
    return pd.DataFrame(rows).set_index(["group", "class"])


def pick_examples(preds, targets, n: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """Row positions of the ``n`` best-predicted images (highest per-image F1 of the predicted against the true
    labels; among equals, those with more labels first) and the ``n`` worst (lowest F1; among equals, more wrong
    labels first); remaining ties in random order (seeded). Also the per-image F1 of every row (``f1``)."""
    preds = _as_numpy(preds) > 0
    targets = _as_numpy(targets) > 0
    order = np.random.default_rng(seed).permutation(len(preds))  # random order first: ties stay random
    tp = (preds & targets).sum(axis=1)
    errors = (preds ^ targets).sum(axis=1)
    f1 = np.divide(2 * tp, 2 * tp + errors, out=np.zeros(len(tp)), where=(2 * tp + errors) > 0)
    # np.lexsort is stable and sorts by its last key first.
    best = order[np.lexsort((-targets.sum(axis=1)[order], -f1[order]))][:n]
    worst = order[np.lexsort((-errors[order], f1[order]))][:n]
    return {"best": best, "worst": worst, "f1": f1}


# ----------------------------------------------------------------------------------------------------------
# test predictions
# ----------------------------------------------------------------------------------------------------------
def prediction_stats(predictions: Mapping[str, Sequence[int]], top: int = 5) -> dict:
    """Images, labels per image, images without a label and the most predicted classes of a predictions dict."""
    per_image = np.array([len(v) for v in predictions.values()])
    counts = Counter(c for v in predictions.values() for c in v)
    return {"images": len(predictions), "mean_labels": float(per_image.mean()) if len(per_image) else 0.0,
            "empty": int((per_image == 0).sum()), "max_labels": int(per_image.max()) if len(per_image) else 0,
            "top_classes": [(CLASSES[c], n) for c, n in counts.most_common(top)]}


# ----------------------------------------------------------------------------------------------------------
# comparative study
# ----------------------------------------------------------------------------------------------------------
def _recipe(config: Mapping) -> str:
    spec = networks.get_spec(config["model"])
    parts = [f"{config['loss']}", f"{config.get('image_size') or spec.input_size}px", f"bs {config['batch_size']}",
             f"lr {config['lr']:g}", config["scheduler"]]
    if not config.get("pretrained", True):
        parts.append("from scratch")
    if config.get("cache_stages"):
        parts.append(f"cache {config['cache_stages']} stages")
    if config.get("freeze_epochs"):
        parts.append(f"head-only {config['freeze_epochs']} ep")
    if config.get("unfreeze_stages") is not None:
        parts.append(f"train last {config['unfreeze_stages']} stages")
    if config.get("ema_decay"):
        parts.append(f"EMA {config['ema_decay']:g}")
    if config.get("tta_hflip"):
        parts.append("TTA flip")
    return ", ".join(parts)


def _hardware_text(hardware: Mapping | None) -> str:
    if not hardware:
        return ""
    if hardware.get("gpu"):
        return hardware["gpu"]
    threads = hardware.get("torch_threads")
    return f"{hardware.get('device', 'cpu')} ({threads} thread{'' if threads == 1 else 's'})"


def collect_runs(runs_dir) -> tuple[pd.DataFrame, list[str]]:
    """One row per run folder under ``runs_dir`` (a folder holding config.json), from the files fit.fit
    writes: config.json, split.json, metrics.csv, summary.json (absent while a run is unfinished).

    Returns (table, skipped): sub-folders without config.json are listed in ``skipped``, not silently dropped.
    """
    runs, skipped = list_runs(runs_dir)
    rows = []
    for run_dir in runs:
        config = run_dir.config().to_dict()
        summary = run_dir.summary()
        history = pd.DataFrame(run_dir.history())
        split = run_dir.split_record()
        if summary is not None and summary.get("best"):
            best, status = summary["best"], summary["status"]
            wall, epochs_done = summary["time_s"], summary["epochs_done"]
        elif len(history):
            best = history.loc[history["val/f1"].idxmax()].to_dict()
            status, wall, epochs_done = "unfinished", float(history["time_s"].sum()), len(history)
        else:
            best, status, wall, epochs_done = {}, "no epoch", float("nan"), 0
        if summary is not None and summary.get("status") == "failed":  # fit.fit marks a run that raised
            status = "failed"
        rows.append({"run": run_dir.name, "model": config["model"], "recipe": _recipe(config),
                     "data": Path(split.get("data_root", config.get("data_root") or "?")).name,
                     "train/val images": f"{len(split.get('train', []))}/{len(split.get('val', []))}",
                     "epochs": f"{epochs_done}/{config['epochs']}", "status": status,
                     "wall time (min)": wall / 60, "hardware": _hardware_text(summary and summary.get("hardware")),
                     "best epoch": best.get("epoch"), "val F1": best.get("val/f1"),
                     "val precision": best.get("val/precision"), "val recall": best.get("val/recall"),
                     "val mAP": best.get("val/map"), "val F1 @0.5": best.get("val/f1@0.5")})
    return pd.DataFrame(rows), skipped


def comparable_runs(table: pd.DataFrame, data_root, n_train: int, n_val: int) -> pd.DataFrame:
    """The finished runs of a :func:`collect_runs` table on ``data_root``'s data with a split of this size."""
    if not len(table):
        return table
    same = (table["status"] == "finished") & (table["data"] == Path(data_root).name) & \
        (table["train/val images"] == f"{n_train}/{n_val}")
    return table[same].reset_index(drop=True)


def load_reference_study(path=None) -> tuple[pd.DataFrame | None, str]:
    """The team's reference study (``study/results.csv``): (table, message). A missing file gives
    (None, message saying so); a file without the expected columns raises naming them."""
    path = Path(path) if path is not None else STUDY_CSV
    if not path.is_file():
        return None, f"{path} is not there yet: the reference study has not been committed to this checkout."
    frame = pd.read_csv(path)
    missing = [column for column in STUDY_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(STUDY_COLUMNS)}")
    return frame, f"{path.name}: {len(frame)} rows, measured with {frame['protocol'].nunique()} protocols."


def study_rows(frame: pd.DataFrame | None, protocol: str) -> pd.DataFrame | None:
    """The rows of the reference study measured with ``protocol``, numbered from 1, their columns as they read
    (None without a study or such rows)."""
    if frame is None or not (frame["protocol"] == protocol).any():
        return None
    rows = frame[frame["protocol"] == protocol].drop(columns="protocol").reset_index(drop=True)
    rows.index = pd.RangeIndex(1, len(rows) + 1, name="#")
    return rows.dropna(axis=1, how="all")


def threshold_floor_row(frame: pd.DataFrame | None):
    """The study's row on a floor under the class thresholds (None without it)."""
    rows = study_rows(frame, "threshold policies")
    return None if rows is None else rows.iloc[0]


def study_summary(rows: pd.DataFrame | None) -> pd.DataFrame | None:
    """A study table in four columns (F1, its standard error, mAP, time in minutes) indexed by recipe; the
    commands, the hardware (one 2-core CPU for every row) and the notes stay in ``study/results.csv``."""
    if rows is None:
        return None
    frame = pd.DataFrame({"recipe": rows["recipe"], "F1": rows["val_f1"], "F1 se": rows.get("f1_se"),
                          "mAP": rows["val_map"], "time (min)": rows["wall_time_s"] / 60})
    return frame.set_index("recipe")


def run_evidence(run_dir, data_root, test_size: int, repeats: int = 10) -> dict:
    """What one finished run offers to choose a submission by: its validation outputs, the threshold table (held-out
    halves of the validation split), the cross-fit table (mock test sets; None when not cross-fitted) and the
    expected test F1 of :func:`narrative.expected_score`."""
    from coco import narrative

    run_dir = RunDir(run_dir)
    config, summary = run_dir.config(), run_dir.summary()
    val = validation_outputs(run_dir, data_root=data_root)
    steps = threshold_table(val["probs"], val["targets"], val["thresholds"], config, repeats=repeats)
    crossed = cross_fit_table(run_dir, config, test_size=test_size, repeats=repeats)
    return {"run_dir": run_dir, "config": config, "summary": summary, "val": val, "threshold_table": steps,
            "cross_fit": crossed, "expected": narrative.expected_score(steps, crossed, test_size)}


def recipe_comparison(evidence: Mapping[str, Mapping]) -> tuple[pd.DataFrame, str]:
    """The runs side by side (recipe, backbone, validation mAP of best.pt, expected test F1 and its protocol, time)
    and the recipe whose expected test F1 is highest: the one that writes the test predictions."""
    rows = []
    for name, item in evidence.items():
        summary, expected = item["summary"], item["expected"]
        rows.append({"recipe": name, "backbone": item["config"].model,
                     "validation mAP": summary["best"]["val/map"], "expected test F1": expected["f1"],
                     "spread": expected["spread"],
                     "protocol": "mock test sets (cross-fitted)" if item["cross_fit"] is not None
                     else "F1 at 0.5 + held-out tuning gain",
                     "time (min)": summary["time_s"] / 60})
    table = pd.DataFrame(rows).set_index("recipe")
    return table, str(table["expected test F1"].idxmax())


def predicted_labels(evidence: Mapping) -> dict:
    """Labels per image that a run's tuned thresholds predict on its validation images and, when it was
    cross-fitted, on the mock test sets (``run_evidence``); keyword arguments of narrative.labels_per_image_text."""
    val = evidence["val"]
    crossed = evidence["cross_fit"]
    mock = None
    if crossed is not None and "labels_per_image" in crossed.columns:
        mock = float(crossed["labels_per_image"].iloc[1])
    return {"validation": float(val["thresholds"].apply(val["probs"]).sum(axis=1).mean()), "mock": mock}


def frontier_rows(path=None) -> pd.DataFrame | None:
    """The frontier of accuracy per CPU hour (``study/frontier.csv``, written by ``python -m study.frontier``): one
    row per measured recipe, its nested-CV F1 (mean over seeds), standard error, mAP, hours and peak memory at the
    course's 65,000 + 4,952 images on a 2-core CPU; None where the study has not been run."""
    path = Path(path) if path is not None else FRONTIER_CSV
    if not path.is_file():
        return None
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    frame["preset"] = frame["preset"].fillna("")
    return frame.sort_values("hours_65k").reset_index(drop=True)

