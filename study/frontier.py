"""Study: accuracy per CPU hour. Every recipe of the nested cross-validation as a point: its held-out F1 on coco-mini
(mean over seeds, with its standard error) against its hours at the course's 65,000 + 4,952 images on this CPU.

F1, standard error and mAP come from the "nested CV" rows of ``study/results.csv`` (``python -m study.recipe_cv``,
two seeds or more). Hours, peak memory and disk come from the engine's own estimate (``coco.costs.estimate``: the
recipe's own network timed on this machine, image decoding timed on coco-mini's photos, extrapolated to the course's
size), the estimate every run prints before it starts, so that every point is placed by one method; for the
presets, the whole-run benchmark (``python -m loops bench --recipe NAME --images 500 2500``,
``study/measurements/bench_recipe_NAME.json``) stands beside it: it measured 1.0-1.4x the estimate here.

    python -m study.frontier --data-root ../shared/coco-mini     # writes study/frontier.csv, .md and .png
"""
import argparse
import json
from pathlib import Path

import pandas as pd
import torch

from coco import costs, data, figures, recipe
from coco.config import config_from_preset
from coco.course import course_dirs

STUDY = Path(__file__).resolve().parent
COURSE_LABELLED, COURSE_TEST = 65_000, 4_952

# (short name, the recipe's row in results.csv, the cpu preset's settings it changes, more backbones whose features it
# concatenates (their extraction is added), the preset it is, if one)
_LITE0_LINEAR = dict(model="efficientnet_lite0", image_size=224, head_hidden=0, head_dropout=0.2)
_ONE_VIEW = dict(cache_views=1, tta_hflip=False)
RECIPES = [
    ("Lite0 224, 1 view, linear, 15 epochs", "cpu-fast: Lite0 224 px, average + max pool, one view (no mirror, no flip "
     "TTA), linear head, ASL, dropout 0.2, 15 epochs (the cpu-fast preset); cross-fit",
     {**_LITE0_LINEAR, **_ONE_VIEW, "epochs": 15}, [], "cpu-fast"),
    ("Lite0 224, 1 view, linear", "cpu-fast candidate: Lite0 224 px, average + max pool, one view (no mirror, no flip "
     "TTA), linear head, ASL, dropout 0.2; cross-fit", {**_LITE0_LINEAR, **_ONE_VIEW}, [], ""),
    ("Lite0 224, 2 views, linear", "cpu-fast candidate: Lite0 224 px, average + max pool, image + mirror, linear head, "
     "ASL, dropout 0.2; cross-fit", _LITE0_LINEAR, [], ""),
    ("Lite2 260, 1 view, linear", "cpu-fast candidate: Lite2 260 px (its own size), average + max pool, one view (no "
     "mirror, no flip TTA), linear head, ASL, dropout 0.2; cross-fit",
     {"image_size": 260, "head_hidden": 0, "head_dropout": 0.2, **_ONE_VIEW}, [], ""),
    ("Lite2 384", "Lite2 384 px, average + max pool, MLP head (1024), ASL: the cpu preset, rerun at 1 thread as the "
     "reference of the paired differences; cross-fit", {}, [], "cpu"),
    ("Lite2 384, fold heads averaged", "Lite2 384 px as the cpu preset, prediction = mean of the 5 cross-fit fold "
     "heads instead of the final head (same heads and thresholds as the cross-fit row); cross-fit fold-avg",
     {}, [], ""),
    ("Lite1 + Lite2 384", "multi-backbone: Lite1 384 px + Lite2 384 px features concatenated per view (5,120 values), "
     "MLP head (1024), ASL; ONE SEED ONLY (seed 1 not run: out of time), not a deciding row; cross-fit", {},
     [{"model": "efficientnet_lite1"}], ""),
    ("Lite2 512", "Lite2 512 px (upsampled), average + max pool, MLP head (1024), ASL (the cpu preset at 512 px); "
     "cross-fit", {"image_size": 512}, [], ""),
    ("Lite2 512, fold heads averaged", "Lite2 512 px as above, prediction = mean of the 5 cross-fit fold heads; "
     "cross-fit fold-avg", {"image_size": 512}, [], ""),
]


def _course_estimate(overrides: dict, source) -> costs.Estimate:
    config = config_from_preset("cpu", progress=False, **overrides)
    n_val = round(COURSE_LABELLED * config.val_fraction)
    return costs.estimate(config, recipe.build_net(config), source, n_train=COURSE_LABELLED - n_val, n_val=n_val,
                          n_test=COURSE_TEST, device=torch.device("cpu"), out_dir=Path("."))


_MEASURED: dict = {}


def _estimate(overrides: dict, more_backbones: list, source, repeats: int = 3) -> dict:
    """Hours, peak memory and disk at the course's size, the median of ``repeats`` estimates (each times the
    network for a few batches only); a second backbone adds its feature extraction. A recipe that trains what
    another one trains (the same settings) gets that one's figures, so equal costs are drawn equal."""
    key = repr((sorted(overrides.items()), more_backbones))
    if key not in _MEASURED:
        runs = []
        for _ in range(repeats):
            estimate = _course_estimate(overrides, source)
            seconds, disk = estimate.seconds, estimate.disk_bytes
            for extra in more_backbones:
                added = _course_estimate({**overrides, **extra}, source)
                seconds += added.phases["feature cache"][0]
                disk += added.disk_bytes
            runs.append({"hours_65k": seconds / 3600, "peak_gib": estimate.peak_bytes / 2**30,
                         "disk_gib": disk / 2**30})
        _MEASURED[key] = sorted(runs, key=lambda run: run["hours_65k"])[len(runs) // 2]
    return _MEASURED[key]


def _bench(preset: str) -> dict:
    path = STUDY / "measurements" / f"bench_recipe_{preset}.json"
    if not preset or not path.is_file():
        return {}
    course = json.loads(path.read_text())["course"]
    return {"bench_hours_65k": course["total_s"] / 3600, "bench_peak_gib": course["peak_rss_bytes"] / 2**30}


def _markdown(table: pd.DataFrame) -> str:
    cells = [["–" if value != value else f"{value:.3g}" if isinstance(value, float) else str(value) for value in row]
             for row in table.values]
    lines = ["| " + " | ".join(table.columns) + " |", "|" + " --- |" * len(table.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="../shared/coco-mini")
    args = parser.parse_args()
    study = pd.read_csv(STUDY / "results.csv")
    dirs = course_dirs(args.data_root)
    source = data.COCOTrainImageDataset(dirs["train_images"], dirs["train_labels"])
    rows = []
    for short, name, overrides, more_backbones, preset in RECIPES:
        found = study[(study["protocol"] == "nested CV") & (study["recipe"] == name)]
        if found.empty:
            print(f"not in results.csv yet: {name}")
            continue
        row = found.iloc[-1]
        rows.append({"short": short, "preset": preset, "f1": row["val_f1"], "f1_se": row["f1_se"],
                     "map": row["val_map"], **_estimate(overrides, more_backbones, source), **_bench(preset),
                     "recipe": name})
    frame = pd.DataFrame(rows)
    # every point is placed by the same method (the estimate); a preset's whole-run benchmark stands beside it
    frame.to_csv(STUDY / "frontier.csv", index=False, float_format="%.4g")
    figures.plot_frontier(frame, save=STUDY / "frontier.png")
    table = frame[["short", "preset", "f1", "f1_se", "map", "hours_65k", "bench_hours_65k", "peak_gib"]]
    (STUDY / "frontier.md").write_text(
        "# Accuracy per CPU hour (generated by `python -m study.frontier`)\n\n" + __doc__.split("\n\n")[1] + "\n\n"
        + _markdown(table) + "\n", encoding="utf-8")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
