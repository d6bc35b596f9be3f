"""PNG figures for the theory experiments (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .ode import OBJECTIVES  # noqa: E402

COLORS = ["tab:red", "tab:blue", "tab:green", "tab:orange"]


def _trajectory_grid(result: dict, labels: list[str], path, title: str, fixed_key: str = "fixed_points",
                     extra=None) -> None:
    """Rows: objectives; columns: depths (+ optional summary column). Weights over their fixed points."""
    depths = result["depths"]
    n_cols = len(depths) + (1 if extra else 0)
    fig, axes = plt.subplots(2, n_cols, figsize=(3.2 * n_cols, 5.6), squeeze=False)
    for row, objective in enumerate(OBJECTIVES):
        for col, depth in enumerate(depths):
            ax = axes[row, col]
            run = result["runs"][f"{objective}_L{depth}"]
            fixed = np.asarray(run[fixed_key])
            for i, label in enumerate(labels):
                ax.plot(run["time"], run["ode_weights"][:, i] / fixed[i], color=COLORS[i], label=f"{label} (ODE)")
                gd = run.get("gd", run if "weights" in run else None)
                if gd is not None:
                    step = max(1, len(gd["time"]) // 25)
                    ax.plot(gd["time"][::step], gd["weights"][::step, i] / fixed[i], "o", ms=3,
                            color=COLORS[i], alpha=0.6, label=f"{label} (GD)")
            ax.axhline(0.5, color="grey", lw=0.5, ls=":")
            ax.set_title(f"{objective.upper()}  L={depth}", fontsize=9)
            ax.set_ylim(-0.05, 1.25)
            if col == 0:
                ax.set_ylabel("w / fixed point")
            if row == 1:
                ax.set_xlabel("time (lr x steps)")
    axes[0, 0].legend(fontsize=7)
    if extra:
        extra(axes[0, -1], axes[1, -1])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_depth_gap(result: dict, path) -> None:
    def summary(top, bottom):
        for src, style in (("ode", "-"), ("gd", "o")):
            if src in result["log_gap"]:
                for objective, color in zip(OBJECTIVES, COLORS):
                    top.plot(result["depths"], result["log_gap"][src][objective], style, color=color,
                             label=f"{objective} ({src})")
        top.axhline(0, color="grey", lw=0.5)
        top.set_xlabel("depth L")
        top.set_title("log t*(rho low) / t*(rho high)", fontsize=9)
        top.legend(fontsize=7)
        bottom.axis("off")

    labels = [f"rho={r:g}" for r in result["rho"]]
    _trajectory_grid(result, labels, path, f"Equal lambda={result['lam'][0]:g}, different rho "
                     f"(eps={result['eps']:g})", extra=summary)


def plot_ordering(result: dict, path) -> None:
    def summary(top, bottom):
        for objective, color in zip(OBJECTIVES, COLORS):
            ratios = [t[1] / t[0] for t in (result["runs"][f"{objective}_L{L}"]["critical_times"]
                                            for L in result["depths"])]
            top.semilogy(result["depths"], ratios, "-o", color=color, label=objective)
        top.axhline(1, color="grey", lw=0.5)
        top.set_title("t*(B) / t*(A)  (<1: B first)", fontsize=9)
        top.set_xlabel("depth L")
        top.legend(fontsize=7)
        bottom.axis("off")

    labels = [f"{name}: lam={lam:g}, rho={rho:g}" for name, lam, rho in zip("AB", result["lam"], result["rho"])]
    _trajectory_grid(result, labels, path, "A: high lambda / low rho (noisy); B: low lambda / high rho",
                     extra=summary)


def plot_many_features(result: dict, path) -> None:
    depths = result["depths"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for objective, color in zip(OBJECTIVES, COLORS):
        axes[0].plot(depths, result["spearman_vs_rho"][objective], "-o", color=color, label=f"{objective} vs rho")
        axes[0].plot(depths, result["spearman_vs_lam"][objective], "--s", color=color, label=f"{objective} vs lam")
    axes[0].axhline(0, color="grey", lw=0.5)
    axes[0].set_xlabel("depth L")
    axes[0].set_ylabel("Spearman(t*, .)  (<0: high value learned first)")
    axes[0].legend(fontsize=7)
    rho, lam = np.array(result["rho"]), np.array(result["lam"])
    for ax, objective in zip(axes[1:], OBJECTIVES):
        t = np.array(result["critical_times"][objective][-1], dtype=float)
        sc = ax.scatter(rho, lam, c=np.argsort(np.argsort(t)), cmap="viridis")
        ax.set_xlabel("rho")
        ax.set_ylabel("lambda")
        ax.set_title(f"{objective.upper()} L={depths[-1]}: learning order (dark = first)", fontsize=9)
        fig.colorbar(sc, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_generative(result: dict, path) -> None:
    def summary(top, bottom):
        for objective, color in zip(OBJECTIVES, COLORS):
            for depth, ls in zip(result["depths"], ["-", "--", ":", "-."]):
                run = result["runs"][f"{objective}_L{depth}"]
                t = np.asarray(run["time"])
                bottom.plot(t / t[-1], run["semantic_share"], ls, color=color, label=f"{objective} L={depth}")
        bottom.set_xlabel("time / horizon")
        bottom.set_title("semantic share of representation variance", fontsize=9)
        bottom.legend(fontsize=6)
        top.axis("off")

    _trajectory_grid(result, ["semantic", "flicker"], path,
                     f"{result['kind']} linear generative model (GD on pixels, dots; ODE, lines)", extra=summary)


def plot_bridge(result: dict, path) -> None:
    conditions = list(result["conditions"])
    fig, axes = plt.subplots(1, len(conditions), figsize=(4.5 * len(conditions), 3.6), squeeze=False)
    for ax, condition in zip(axes[0], conditions):
        for (objective, run), color in zip(result["conditions"][condition]["runs"].items(), COLORS):
            ax.plot(run["step"], run["accuracy"], "-o", color=color, label=f"{objective} objective")
        ax.axhline(0.1, color="grey", lw=0.5, ls=":")
        ax.set_title(f"{condition} clips", fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel("linear-probe accuracy (digit)")
        ax.legend(fontsize=7)
    fig.suptitle("Tiny ViT: pixel reconstruction vs latent prediction (EMA target)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
