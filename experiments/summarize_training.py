"""Epochs, final loss and clean accuracy per run from the trainer's log.jsonl files.

    python experiments/summarize_training.py RUNS_DIR RUN [RUN ...] > training.md

Epoch wall times are listed as logged, but are no cost measure when runs shared the machine with
other work: the cost column of the evidence is experiments/cost_robustness.py's, from bench/step.py.
"""

import json
import os
import statistics
import sys


def main() -> None:
    runs, methods = sys.argv[1], sys.argv[2:]
    print(
        "| run | epochs | epoch wall time (s, median; machine shared) | final loss | clean test accuracy (%, all 10,000) |"
    )
    print("|---|---|---|---|---|")
    rows = {}
    for method in methods:
        with open(os.path.join(runs, method, "log.jsonl")) as log:
            records = [json.loads(line) for line in log if line.strip()]
        rows[method] = (len(records), statistics.median(r["seconds"] for r in records), records[-1])
    for method, (epochs, seconds, last) in rows.items():
        print(f"| {method} | {epochs} | {seconds:.1f} | {last['loss']:.3f} | {100 * last['test_accuracy']:.2f} |")


if __name__ == "__main__":
    main()
