"""The island filter's default size, scored from a segmentation run that measured the candidate sizes.

    python -m benchmarks.islands [--source results/segmentation.json]

``benchmarks/segmentation.py`` scores every fit's prior-corrected test prediction with the island filter at
each candidate size. This script takes those numbers from ``results/segmentation.json``, rebuilds each fit's
labelled images from the dataset and seed it records, asks ``islands.label_min_island`` which size those
labels support (the default of ``segment fit``; the test images play no part in the choice) and reports the
mIoU at that size against the filter off. It trains nothing: it re-reads a run (useful when that run chose
its sizes another way, as the one of 2026-12-07 did: a fixed 8 px).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.common import RESULTS, write_result
from benchmarks.segmentation import CORRECTED, ISLANDS, SETTINGS, _subset, island_table
from meddiff.segment.islands import CANDIDATE_SIZES, LABEL_TOLERANCE, label_min_island


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=RESULTS / "segmentation.json", help="a segmentation run's JSON")
    args = parser.parse_args()
    started = time.monotonic()
    run = json.loads(args.source.read_text())
    rows = run["rows"]
    settings = {}
    for row in rows:
        if row["method"] != ISLANDS:
            continue
        name = row["dataset"]
        if name not in settings:
            settings[name] = SETTINGS[name](False)
        pool = settings[name].pool
        labelled = _subset(pool, [pool.names.index(n) for n in row["images"]])
        chosen = label_min_island(labelled.masks)
        plain = next(
            r["miou"]
            for r in rows
            if (r["dataset"], r["labels"], r["seed"], r["method"]) == (name, row["labels"], row["seed"], CORRECTED)
        )
        row["min_island"] = chosen
        row["miou"] = row["island_miou"][str(chosen)] if chosen else plain
    table = island_table(rows)
    changes = {}
    for row in rows:
        if row["method"] == ISLANDS:
            plain = next(
                r["miou"]
                for r in rows
                if (r["dataset"], r["labels"], r["seed"], r["method"])
                == (row["dataset"], row["labels"], row["seed"], CORRECTED)
            )
            changes[(row["dataset"], row["labels"], row["seed"])] = 100 * (row["miou"] - plain)
    worst = min(changes, key=changes.get)
    verdict = (
        f"Default - off over the {len(changes)} fits: {min(changes.values()):+.2f} to {max(changes.values()):+.2f} "
        f"mIoU points; the default lowers no fit's mIoU: {'met' if changes[worst] >= 0 else 'NOT met'} (worst: "
        f"{worst[0]}, {worst[1]} labels, seed {worst[2]})."
    )
    body = (
        f"Re-read from `{args.source.name}` (its command: `{run['command']}`; datasets it finished: "
        f"{', '.join(settings)}): the mIoU of each "
        f"fit's prior-corrected test prediction with the island filter off, at each candidate size (pixels at the "
        f"working size) and at the default size, the largest of {list(CANDIDATE_SIZES)} whose filter changes at "
        f"most {LABEL_TOLERANCE:.1%} of the fit's own labelled pixels (else off), chosen from the labels alone. "
        f"Mean over seeds; 'sizes chosen' lists each seed's.\n\n{table}\n\n{verdict}\n"
    )
    write_result(
        "islands",
        "The island filter's default size: chosen from the labelled masks, scored on the test images",
        data=", ".join(settings) + " (../shared/data and nilearn's MNI152), as in segmentation.md",
        seed=str(run["seed"]),
        wall_seconds=time.monotonic() - started,
        body=body,
        numbers={"rows": [r for r in rows if r["method"] == ISLANDS]},
    )


if __name__ == "__main__":
    main()
