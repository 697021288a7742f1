"""Reports in the paper's form: a Markdown table laid out like Table II (attacks and eps as rows,
methods as columns), robust accuracy vs eps per attack (Fig 6) and transfer-matrix heatmaps, PNG."""

from __future__ import annotations

import os

import matplotlib

from .attacks import LABELS

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def markdown_table(results: dict[str, dict]) -> str:
    """results: {method: evaluation dict with "clean", "attacks", optional "black_box" and "tsr"}."""
    methods = list(results)
    first = results[methods[0]]
    lines = ["| Attack | eps | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    lines.append("| No attack | - | " + " | ".join(f"{100 * results[m]['clean']:.2f}" for m in methods) + " |")
    for attack, by_eps in first["attacks"].items():
        for eps in by_eps:
            cells = [f"{100 * results[m]['attacks'][attack][eps]['all']:.2f}" for m in methods]
            lines.append(f"| {LABELS.get(attack, attack)} | {eps:g} | " + " | ".join(cells) + " |")
    for eps in first.get("worst", {}):
        lines.append(
            f"| **worst case** (per sample, all attacks above) | {eps:g} | "
            + " | ".join(f"{100 * results[m]['worst'][eps]['all']:.2f}" for m in methods)
            + " |"
        )
    for surrogate, by_attack in first.get("black_box", {}).items():
        for attack, by_eps in by_attack.items():
            for eps in by_eps:
                cells = [f"{100 * results[m]['black_box'][surrogate][attack][eps]['all']:.2f}" for m in methods]
                lines.append(
                    f"| black-box {LABELS.get(attack, attack)} from {surrogate} | {eps:g} | " + " | ".join(cells) + " |"
                )
    for eps in first.get("tsr", {}):
        lines.append(
            f"| TSR (PGD) | {eps:g} | " + " | ".join(f"{results[m]['tsr'][eps]['tsr']:.2f}" for m in methods) + " |"
        )
    if "curvature" in first:
        for key, label in (
            ("u_norm", "curvature: mean |u| (eq 9)"),
            ("u_cosine", "curvature: mean cos(u_i, u_j) (eq 10)"),
            ("lambda_max", "curvature: mean / median lambda_max"),
        ):
            cells = [
                f"{results[m]['curvature'][key]['mean']:.4g}"
                + (f" / {results[m]['curvature'][key]['median']:.4g}" if key == "lambda_max" else "")
                for m in methods
            ]
            lines.append(f"| {label} | - | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_robustness(results: dict[str, dict], path: str) -> None:
    """Robust accuracy (all samples) vs eps, one panel per attack, one line per method."""
    attacks = list(next(iter(results.values()))["attacks"])
    figure, axes = plt.subplots(1, len(attacks), figsize=(4 * len(attacks), 3.4), squeeze=False)
    for axis, attack in zip(axes[0], attacks):
        for method, result in results.items():
            eps_values = sorted(result["attacks"][attack])
            axis.plot(
                [0] + eps_values,
                [100 * result["clean"]] + [100 * result["attacks"][attack][e]["all"] for e in eps_values],
                marker="o",
                label=method,
            )
        axis.set(
            title=LABELS.get(attack, attack), xlabel="eps (L-inf, pixel units)", ylabel="accuracy (%)", ylim=(0, 100)
        )
        axis.grid(alpha=0.3)
    axes[0][0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_transfer_matrix(matrix, title: str, path: str) -> None:
    """Heatmap of member j's accuracy (%) on examples crafted on member i (rows: source i)."""
    members = len(matrix)
    figure, axis = plt.subplots(figsize=(1.2 * members + 2, 1.2 * members + 1.5))
    image = axis.imshow([[100 * v for v in row] for row in matrix], vmin=0, vmax=100, cmap="viridis")
    for i in range(members):
        for j in range(members):
            axis.text(
                j,
                i,
                f"{100 * matrix[i][j]:.1f}",
                ha="center",
                va="center",
                color="white" if matrix[i][j] < 0.6 else "black",
            )
    axis.set(
        xticks=range(members), yticks=range(members), xlabel="evaluated member j", ylabel="source member i", title=title
    )
    figure.colorbar(image, ax=axis, label="accuracy (%)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(results: dict[str, dict], out_dir: str) -> list[str]:
    """Markdown table and PNG plots under out_dir; returns the written paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "table.md"), os.path.join(out_dir, "robustness.png")]
    with open(paths[0], "w") as out:
        out.write(markdown_table(results))
    plot_robustness(results, paths[1])
    for method, result in results.items():
        for eps, tsr in result.get("tsr", {}).items():
            path = os.path.join(out_dir, f"transfer_{method}_eps{eps:g}.png")
            plot_transfer_matrix(tsr["matrix"], f"{method}: PGD eps={eps:g}, TSR={tsr['tsr']:.1f}", path)
            paths.append(path)
    return paths
