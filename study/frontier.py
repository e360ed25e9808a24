"""Study: accuracy per CPU hour. Every recipe of the nested cross-validation as a point: its held-out F1 on coco-mini
(mean over seeds, with its standard error) against its hours at the course's 65,000 + 4,952 images on this CPU.

F1, standard error and mAP come from the "nested CV" rows of ``study/results.csv`` (``python -m study.recipe_cv``,
two seeds or more). Hours, peak memory and disk come from the engine's own estimate (``coco.costs.estimate``: the
recipe's own network timed on this machine, image decoding timed on coco-mini's photos, extrapolated to the course's
size), the estimate every run prints before it starts; for the presets, the whole-run benchmark
(``python -m loops bench --recipe NAME --images 500 2500``, ``study/measurements/bench_recipe_NAME.json``) is
shown beside it and placed on the figure.

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

# (short name, the recipe's row in results.csv, the cpu preset's settings it changes, the preset it is, if one)
RECIPES = [
    ("Lite0 224, 1 view, linear", "cpu-fast candidate: Lite0 224 px, one view (no mirror, no flip TTA), linear head, "
     "ASL, dropout 0.2; cross-fit", dict(model="efficientnet_lite0", image_size=224, cache_views=1, tta_hflip=False,
                                        head_hidden=0, head_dropout=0.2), "cpu-fast"),
    ("Lite0 224, 2 views, linear", "cpu-fast candidate: Lite0 224 px, linear head, ASL, dropout 0.2; cross-fit",
     dict(model="efficientnet_lite0", image_size=224, head_hidden=0, head_dropout=0.2), ""),
    ("Lite2 260, 1 view, linear", "Lite2 260 px, one view (no mirror, no flip TTA), linear head, ASL, dropout 0.2; "
     "cross-fit", dict(image_size=260, cache_views=1, tta_hflip=False, head_hidden=0, head_dropout=0.2), ""),
    ("Lite2 384", "Lite2 384 px, ASL: the cpu preset, rerun at 1 thread as the reference of the paired "
     "differences; cross-fit", dict(), "cpu"),
    ("Lite2 448", "Lite2 448 px (upsampled), ASL (the cpu preset at 448 px); cross-fit", dict(image_size=448), ""),
    ("Lite2 512", "Lite2 512 px (upsampled), ASL (the cpu preset at 512 px); cross-fit", dict(image_size=512), ""),
]


def _estimate(overrides: dict, source) -> dict:
    config = config_from_preset("cpu", progress=False, **overrides)
    n_val = round(COURSE_LABELLED * config.val_fraction)
    estimate = costs.estimate(config, recipe.build_net(config), source, n_train=COURSE_LABELLED - n_val,
                              n_val=n_val, n_test=COURSE_TEST, device=torch.device("cpu"), out_dir=Path("."))
    return {"hours_65k": estimate.total_s / 3600, "peak_gib": estimate.peak_bytes / 2**30,
            "disk_gib": estimate.disk_bytes / 2**30}


def _bench(preset: str) -> dict:
    path = STUDY / "measurements" / f"bench_recipe_{preset}.json"
    if not preset or not path.is_file():
        return {}
    course = json.loads(path.read_text())["course"]
    return {"bench_hours_65k": course["total_s"] / 3600, "bench_peak_gib": course["peak_rss_bytes"] / 2**30}


def _markdown(table: pd.DataFrame) -> str:
    cells = [[f"{value:.3g}" if isinstance(value, float) else str(value) for value in row] for row in table.values]
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
    for short, name, overrides, preset in RECIPES:
        found = study[(study["protocol"] == "nested CV") & (study["recipe"] == name)]
        if found.empty:
            print(f"not in results.csv yet: {name}")
            continue
        row = found.iloc[-1]
        rows.append({"short": short, "preset": preset, "f1": row["val_f1"], "f1_se": row["f1_se"],
                     "map": row["val_map"], **_estimate(overrides, source), **_bench(preset), "recipe": name})
    frame = pd.DataFrame(rows)
    # a preset is placed where its whole-run benchmark puts it; the estimate stays in its own column
    frame["hours_65k_estimate"] = frame["hours_65k"]
    if "bench_hours_65k" in frame:
        frame["hours_65k"] = frame["bench_hours_65k"].fillna(frame["hours_65k"])
    frame.to_csv(STUDY / "frontier.csv", index=False, float_format="%.4g")
    figures.plot_frontier(frame, save=STUDY / "frontier.png")
    table = frame[["short", "preset", "f1", "f1_se", "map", "hours_65k", "hours_65k_estimate", "peak_gib"]]
    (STUDY / "frontier.md").write_text(
        "# Accuracy per CPU hour (generated by `python -m study.frontier`)\n\n" + __doc__.split("\n\n")[1] + "\n\n"
        + _markdown(table) + "\n", encoding="utf-8")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
