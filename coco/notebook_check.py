"""The limits an executed ``challenge.ipynb`` must keep (issue 23's "done means"), checked on the file itself:
no error output, AdamW and OneCycleLR named in its outputs, the learning-rate schedule saved as a figure, at most
4,000 words of prose (Markdown cells plus the Markdown that cells generate), at most 60 KB of HTML tables, at most
3 MB in all, and no NaN/inf or raw True/False in the Markdown it generates.

    python -m coco.notebook_check challenge.ipynb --figures images
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

MAX_WORDS, MAX_HTML_BYTES, MAX_FILE_BYTES = 4_000, 60_000, 3_000_000
LR_FIGURE = "05_lr_schedule.png"


def measure(notebook_path, figures_dir=None) -> dict:
    """What the limits are about, read from an executed notebook (and its figures folder, if given)."""
    path = Path(notebook_path)
    notebook = json.loads(path.read_text(encoding="utf-8"))
    prose, outputs, generated_prose, html, errors = [], [], [], 0, []
    for cell in notebook["cells"]:
        if cell["cell_type"] == "markdown":
            prose.append("".join(cell["source"]))
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if output.get("output_type") == "error":
                errors.append(f"{output.get('ename')}: {output.get('evalue')}")
            if "text/markdown" in data:
                prose.append("".join(data["text/markdown"]))
                generated_prose.append(prose[-1])
            html += len("".join(data.get("text/html", "")).encode())
            outputs.append("".join(output.get("text", "")) + "".join(data.get("text/markdown", ""))
                           + "".join(data.get("text/plain", "")))
    generated = "\n".join(outputs)
    return {"errors": errors, "words": sum(len(text.split()) for text in prose), "html_bytes": html,
            "file_bytes": path.stat().st_size,
            "named": {word: word in generated for word in ("AdamW", "OneCycleLR")},
            "lr_figure": None if figures_dir is None else (Path(figures_dir) / LR_FIGURE).is_file(),
            "raw_values": sorted(set(re.findall(r"\b(?:nan|NaN|inf|True|False)\b",
                                                "\n".join(generated_prose)))),}


def problems(measured: dict) -> list[str]:
    """Each limit that ``measured`` (:func:`measure`) breaks, in words."""
    found = [f"error output: {error}" for error in measured["errors"]]
    if measured["words"] > MAX_WORDS:
        found.append(f"{measured['words']:,} words of prose (limit {MAX_WORDS:,})")
    if measured["html_bytes"] > MAX_HTML_BYTES:
        found.append(f"{measured['html_bytes']:,} bytes of HTML tables (limit {MAX_HTML_BYTES:,})")
    if measured["file_bytes"] > MAX_FILE_BYTES:
        found.append(f"{measured['file_bytes']:,} bytes in all (limit {MAX_FILE_BYTES:,})")
    found += [f"{word} not named in the outputs" for word, named in measured["named"].items() if not named]
    if measured["lr_figure"] is False:
        found.append(f"no {LR_FIGURE} in the figures folder")
    found += [f"raw {value} in the prose" for value in measured["raw_values"]]
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook")
    parser.add_argument("--figures", help="the figures folder of the execution (images/ for the committed copy)")
    args = parser.parse_args(argv)
    measured = measure(args.notebook, args.figures)
    print(json.dumps({key: value for key, value in measured.items() if key != "errors"}, indent=1))
    found = problems(measured)
    for problem in found:
        print("FAIL:", problem)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
