"""one row of study/results.csv from the ``--json-out`` summaries of
recipe_cv.py runs of one recipe over several seeds (``--seed 0``, ``--seed 1``, ...).

val_f1 / val_map: mean over the seeds of the 5-fold held-out means; f1_se: mean over the seeds of the fold
standard error (what f1_se means in the nested-CV rows of results.csv). The notes give each seed's F1, the
standard error over the seeds, and, with ``--baseline`` (the same seeds' summaries of the reference recipe, so the
same outer folds), the paired difference over the seeds x folds with its standard error.

    python -m study.seed_rows --recipe "Lite2 512 px ..." --command "python -m study.recipe_cv ..." \\
        --way cross-fit logs/a_s0.json logs/a_s1.json --baseline logs/base_s0.json logs/base_s1.json
"""
import argparse
import csv
import json
from pathlib import Path

import numpy as np

COLUMNS = ["protocol", "recipe", "command", "hardware", "wall_time_s", "val_f1", "f1_se", "val_map", "notes"]
HARDWARE = "2-core Intel Xeon CPU (AMX, AVX512-BF16), no GPU, 1 torch thread"
PROTOCOL_NOTE = ("5 stratified outer folds of coco-mini's 2,395 labelled images, each held out once (479 images), "
                 "per seed; val_f1/val_map: mean over seeds of the 5-fold mean; f1_se: mean over seeds of the "
                 "fold standard error; wall time: mean per recipe_cv run (1 torch thread), extraction not included; "
                 "timed while other jobs shared the two cores (load average 4-5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("summaries", nargs="+", help="recipe_cv.py --json-out files, one per seed")
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--command", required=True)
    parser.add_argument("--way", default="cross-fit")
    parser.add_argument("--baseline", nargs="*", default=[], help="the reference recipe's summaries, same seeds")
    parser.add_argument("--baseline-way", default="cross-fit")
    parser.add_argument("--baseline-name", default="the cpu preset (Lite2 384)")
    parser.add_argument("--notes", default="", help="more notes (costs at 65,000 images...)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.csv")))
    args = parser.parse_args()
    runs = [json.loads(Path(path).read_text(encoding="utf-8")) for path in args.summaries]
    f1s = np.array([run[args.way]["f1"] for run in runs])
    notes = [f"seeds {len(runs)}: F1 " + " / ".join(f"{run[args.way]['f1']:.4f} (+- {run[args.way]['f1_se']:.4f})"
                                                    for run in runs)
             + ", mAP " + " / ".join(f"{run[args.way]['map']:.4f}" for run in runs)]
    if len(runs) > 1:
        notes.append(f"se over seeds {f1s.std(ddof=1) / np.sqrt(len(f1s)):.4f}")
    if args.baseline:
        base = [json.loads(Path(path).read_text(encoding="utf-8")) for path in args.baseline]
        diff = np.concatenate([np.subtract(run[args.way]["fold_f1"], ref[args.baseline_way]["fold_f1"])
                               for run, ref in zip(runs, base)])
        dmap = np.concatenate([np.subtract(run[args.way]["fold_map"], ref[args.baseline_way]["fold_map"])
                               for run, ref in zip(runs, base)])
        notes.append(f"paired vs {args.baseline_name} over {len(diff)} seed x fold pairs: F1 {diff.mean():+.4f} "
                     f"(se {diff.std(ddof=1) / np.sqrt(len(diff)):.4f}), mAP {dmap.mean():+.4f} "
                     f"(se {dmap.std(ddof=1) / np.sqrt(len(dmap)):.4f})")
    notes.append(PROTOCOL_NOTE)
    if args.notes:
        notes.append(args.notes)
    row = {"protocol": "nested CV", "recipe": f"{args.recipe}; {args.way}", "command": args.command,
           "hardware": HARDWARE, "wall_time_s": round(float(np.mean([run["wall_time_s"] for run in runs]))),
           "val_f1": round(float(f1s.mean()), 4),
           "f1_se": round(float(np.mean([run[args.way]["f1_se"] for run in runs])), 4),
           "val_map": round(float(np.mean([run[args.way]["map"] for run in runs])), 4), "notes": "; ".join(notes)}
    out = Path(args.out)
    new = not out.is_file()
    with out.open("a", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)
    print(f"{row['recipe']}: F1 {row['val_f1']} (+- {row['f1_se']}), mAP {row['val_map']}; {notes[1:-1]}")


if __name__ == "__main__":
    main()
