"""The chain study's figures (STUDY_DESIGN §6.6): Figure-1 analog, Figure-4/6 analog (mean line, min-max band
over seeds, the frozen-policy w histogram), pass@k curves with the chance line, LEN / truncation / replay by k.
Each function writes one PNG and returns its path, or None when the study has no data for it yet."""
from __future__ import annotations

from pathlib import Path

from red_megatron.study.analysis import PASS_KS, chance_pass_at_k, mean

FIG1 = ("sft_then_grpo", "red", "red_shift", "luffy")
FIG46 = ("mixpolicy", "onpolicy_offline", "red_entropy", "red_shift", "red")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(study, config, key, stage=-1):
    """(steps, mean, min, max) over seeds of a per-step series (steps where any seed has a value)."""
    runs = [c["series"][stage] for c in study["cells"].get(config, {}).values() if c.get("series")]
    if not runs:
        return None
    n = max(len(r["step"]) for r in runs)
    xs, m, lo, hi = [], [], [], []
    for i in range(n):
        vals = [r[key][i] for r in runs if i < len(r[key]) and r[key][i] is not None]
        if vals:
            xs.append(i + 1)
            m.append(mean(vals))
            lo.append(min(vals))
            hi.append(max(vals))
    return (xs, m, lo, hi) if xs else None


def figure1(study, path: Path) -> Path | None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    drawn = False
    for c in FIG1:
        for ax, key, label in ((axes[0], "len", "online mean length (tokens)"), (axes[1], "acc", "online accuracy")):
            b = _band(study, c, key)
            if b:
                ax.plot(b[0], b[1], label=c if c != "sft_then_grpo" else "sft_then_grpo (GRPO stage)")
                ax.fill_between(b[0], b[2], b[3], alpha=0.15)
                ax.set_ylabel(label)
                drawn = True
    if not drawn:
        plt.close(fig)
        return None
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    return _save(plt, fig, "Figure 1 analog: online length and accuracy per step (mean, min-max over seeds)", path)


def _save(plt, fig, title: str, path: Path) -> Path:
    """Title, layout, PNG, close: every figure ends the same way."""
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure46(study, path: Path) -> Path | None:
    plt = _plt()
    fig, axes = plt.subplots(1, 5, figsize=(19, 3.6))
    drawn = False
    for c in FIG46:
        for ax, key in zip(axes[:4], ("h_rl", "h_sft", "w", "ratio")):
            b = _band(study, c, key)
            if b:
                ax.plot(b[0], b[1], label=c, lw=1)
                ax.fill_between(b[0], b[2], b[3], alpha=0.12)
                drawn = True
    if not drawn:
        plt.close(fig)
        return None
    for ax, title in zip(axes[:4], ("H^rl", "H^sft", "w", "ΔH^sft / ΔH^rl (raw)")):
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[3].set_yscale("symlog")
    axes[0].legend(fontsize=7)
    for c, color in (("red", "C4"), ("frozen_w", "grey")):
        ws = [w for cell in study["cells"].get(c, {}).values() if cell.get("series")
              for w in cell["series"][-1]["w"][1:] if w is not None]
        if ws:
            axes[4].hist(ws, bins=20, range=(1, 3), alpha=0.5, density=True, color=color,
                         label=f"{'trained red' if c == 'red' else 'frozen policy'} (n={len(ws)})")
    axes[4].set_title("w per step")
    axes[4].legend(fontsize=7)
    return _save(plt, fig, "Figure 4/6 analog: entropy dynamics (mean line, min-max band over seeds)", path)


def passk_curves(passk: dict, path: Path) -> Path | None:
    if not passk:
        return None
    plt = _plt()
    bands = ("chain_easy", "chain_medium", "chain_hard", "overall")
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), sharey=True)
    for ax, band in zip(axes, bands):
        for c, d in passk.items():
            if band in d:
                ks = [k for k in PASS_KS if d[band].get(k) is not None]
                ax.plot(ks, [d[band][k] for k in ks], marker="o", ms=3, label=c, lw=1)
        ax.plot(PASS_KS, [chance_pass_at_k(k) for k in PASS_KS], "k:", label="chance 1−(1−1/900)^k")
        ax.set_xscale("log", base=2)
        ax.set_title(band)
        ax.set_xlabel("k")
    axes[0].set_ylabel("pass@k (%)")
    axes[0].legend(fontsize=6)
    return _save(plt, fig, "pass@k (unbiased, n=16), mean over seeds", path)


def len_by_k(study, path: Path) -> Path | None:
    per = {}
    for c in study["configs"]:
        cells = [x["eval"]["by_k"] for x in study["cells"].get(c, {}).values() if x.get("eval", {}) and
                 x["eval"].get("by_k")]
        if cells:
            ks = sorted({k for d in cells for k in d})
            per[c] = {key: [mean([d[k][key] for d in cells if k in d]) for k in ks] for key in
                      ("len", "trunc", "replay")}
            per[c]["k"] = ks
    if not per:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(16, 3.6))
    width = 0.8 / len(per)
    for i, (c, d) in enumerate(per.items()):
        for ax, key in zip(axes, ("len", "trunc", "replay")):
            ax.bar([k + (i - len(per) / 2) * width for k in d["k"]], d[key], width=width, label=c)
    for ax, title in zip(axes, ("LEN by k (tokens)", "truncated % by k", "replay % by k")):
        ax.set_title(title)
        ax.set_xlabel("k")
    axes[0].legend(fontsize=6)
    return _save(plt, fig, "response length, truncation and replay by chain length k", path)


def all_figures(study, passk, out_dir: Path, stem: str) -> dict[str, str]:
    """{name: file name} of the figures written to out_dir as <stem>_<name>.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made = {}
    for name, fn in (("fig1", lambda p: figure1(study, p)), ("fig46", lambda p: figure46(study, p)),
                     ("passk", lambda p: passk_curves(passk, p)), ("len_by_k", lambda p: len_by_k(study, p))):
        p = fn(out_dir / f"{stem}_{name}.png")
        if p is not None:
            made[name] = p.name
    return made
