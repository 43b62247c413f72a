"""The evidence benchmark's report: results.json (every number), report.md and PNGs, from the run folder.

Reads, per seed, each run's in-training evaluation log (``checkpoints/gm_eval.jsonl``), the influence
models' metrics, the oracle summaries, the selections and the pipeline state files. ``heldout=True`` also
evaluates every final checkpoint on the held-out sets (heldout.py) and the clean-source share of every
selection: the only path that reads the held-out folder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from metrics import budget_efficiency, matched_quality_efficiency, paired, summarize_efficiency

from megatron_gm.megatron.eval_hook import read_log
from megatron_gm.stats import bootstrap_ci

METHODS = ("random", "individual", "quota", "group", "fasttext")
SELECTING = ("individual", "quota", "group", "fasttext")
SETS = ("reference", "lambada", "pool_valid")


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def stage1_dir(seed_dir: Path, run: str) -> Path:
    """The stage-1 folder of a method or of random at budget ``random_x{b}``."""
    if run == "group":
        return seed_dir / "group" / "stage1"
    if run == "random":
        return seed_dir / "group" / "random" / "stage1"
    return seed_dir / run / "stage1"


def curve(seed_dir: Path, run: str) -> list[dict]:
    """Stage 0 (shared) + the run's stage 1 evaluation rows, by consumed tokens."""
    rows = []
    for log in (seed_dir / "group" / "stage0" / "checkpoints" / "gm_eval.jsonl",
                stage1_dir(seed_dir, run) / "checkpoints" / "gm_eval.jsonl"):  # fmt: skip
        if log.is_file():
            rows += read_log(log)
    return rows


def final(rows: list[dict], end_iter: int) -> dict | None:
    last = rows[-1] if rows else None
    return last if last and last["iteration"] == end_iter else None


def collect(out: Path, a, bench: dict) -> dict:
    """Per seed and run: the curve, the final losses per set and the tokens trained."""
    first, second = bench["stage_iters"]
    tpi = bench["tokens_per_iteration"]
    runs = list(METHODS) + [f"random_x{b:g}" for b in a.budget_list[1:]]
    ends = {r: first + second for r in METHODS} | {
        f"random_x{b:g}": first + round(b * (first + second)) - first for b in a.budget_list[1:]
    }
    seeds = []
    for k in range(a.seeds):
        sd = out / f"seed{k}"
        per = {}
        for r in runs:
            rows = curve(sd, r)
            f = final(rows, ends[r])
            per[r] = {
                "curve": [
                    (row["consumed_tokens"], {s: row["sets"][s]["loss"] for s in row["sets"]}) for row in rows
                ],
                "final": {s: f["sets"][s]["loss"] for s in f["sets"]} if f else None,
                "final_lambada_accuracy": f["sets"]["lambada"]["accuracy"]
                if f and "lambada" in f["sets"]
                else None,
                "tokens": ends[r] * tpi,
            }
        seeds.append(per)
    return {"runs": runs, "seeds": seeds, "ends": ends}


def efficiency_tables(col: dict, a, sets: tuple[str, ...]) -> tuple[dict, dict]:
    """The paper's way (random's budgets) and the converse (matched quality on the method's curve)."""
    paper: dict = {}
    converse: dict = {}
    budget_runs = ["random"] + [f"random_x{b:g}" for b in a.budget_list[1:]]
    for s in sets:
        paper[s], converse[s] = {}, {}
        for m in SELECTING:
            effs, conv = [], []
            for per in col["seeds"]:
                if per[m]["final"] is None or any(per[r]["final"] is None for r in budget_runs):
                    continue
                bt = [per[r]["tokens"] for r in budget_runs]
                bl = [per[r]["final"][s] for r in budget_runs]
                effs.append(budget_efficiency(bt, bl, per[m]["final"][s], per[m]["tokens"]))
                xs = [t for t, _ in per[m]["curve"]]
                ys = [v[s] for _, v in per[m]["curve"]]
                c = matched_quality_efficiency(xs, ys, per["random"]["final"][s], per["random"]["tokens"])
                conv.append(c)
            if effs:
                paper[s][m] = summarize_efficiency(effs)
                vals = [c.value for c in conv]
                lo, hi = bootstrap_ci(vals)
                never = sum(c.upper_bound for c in conv)  # the method never reached random's final loss
                converse[s][m] = {
                    "per_seed": [f"< {c.value:.2f}" if c.upper_bound else c.value for c in conv],
                    "mean": float(np.mean(vals)), "ci95": [lo, hi], "never_reached": never,
                }  # fmt: skip
    return paper, converse


def final_table(col: dict, sets: tuple[str, ...]) -> tuple[dict, dict]:
    """Final losses per set and method (per seed, mean, CI) and paired differences."""
    finals: dict = {}
    diffs: dict = {}
    done = [per for per in col["seeds"] if all(per[m]["final"] for m in METHODS)]
    for s in sets:
        finals[s] = {}
        for r in col["runs"]:
            v = [per[r]["final"][s] for per in col["seeds"] if per[r]["final"]]
            if v:
                lo, hi = bootstrap_ci(v)
                finals[s][r] = {"per_seed": v, "mean": float(np.mean(v)), "ci95": [lo, hi]}
        diffs[s] = {}
        for m in SELECTING:
            for base in ("random", "individual", "quota", "fasttext"):
                if base != m and done:
                    diffs[s][f"{m} - {base}"] = paired(
                        [per[m]["final"][s] for per in done], [per[base]["final"][s] for per in done]
                    )
    return finals, diffs


def diagnostics(out: Path, a, prefix: str) -> dict:
    """Why the numbers are what they are: model Spearman (with/without relation), labels, clusters, overlap."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)  # keep it open while its memory-mapped lengths are copied
    lengths = np.array(ds.sequence_lengths, dtype=np.int64)
    del ds
    diag: dict = {"seeds": [], "pool_mean_doc_tokens": float(lengths.mean())}
    for k in range(a.seeds):
        sd = out / f"seed{k}"
        d: dict = {}
        for name, folder in (("group_model", sd / "group" / "stage0" / "influence_bootstrap"),
                             ("group_model_round1", sd / "group" / "stage0" / "influence"),
                             ("individual_model", sd / "individual" / "influence")):  # fmt: skip
            m = _json(folder / "metrics.json")
            if m:
                d[name] = {"spearman": m["main"]["best"]["spearman"], "ci95": m["main"]["best"].get("spearman_ci95"),
                           "val_trajectories": m["val_trajectories"], "train_trajectories": m["train_trajectories"],
                           "alpha": m["main"]["best"].get("alpha"), "tau": m["main"]["best"].get("tau")}  # fmt: skip
                if "ablation" in m:
                    ab = m["ablation"]["best"]
                    d[name]["no_relation_spearman"] = ab["spearman"]
                    d[name]["no_relation_ci95"] = ab.get("spearman_ci95")
        for store in ("oracle", "oracle_bootstrap"):
            summ = _json(sd / "group" / "stage0" / store / "summary.json")
            if summ:
                d[store] = {k2: summ[k2] for k2 in summ if k2 in ("trajectories", "labels", "label_mean", "label_std",
                                                                  "seconds", "ref_tokens", "label_spread")}  # fmt: skip
        sels = {}
        for m in SELECTING + ("random",):
            sel = stage1_dir(sd, m) / "selection"
            if (sel / "documents.npy").is_file():
                sels[m] = np.load(sel / "documents.npy")
                man = _json(sel / "manifest.json") or {}
                d.setdefault("selections", {})[m] = {
                    "documents": int(sels[m].size), "tokens": int(lengths[sels[m]].sum()),
                    "mean_doc_tokens": float(lengths[sels[m]].mean()),
                    "clusters": man.get("config", {}).get("num_clusters"),
                }  # fmt: skip
        if "group" in sels:
            d["overlap_with_group"] = {
                m: float(np.intersect1d(sels[m], sels["group"]).size / max(1, sels["group"].size))
                for m in sels
            }
        d["phase_seconds"] = phase_seconds(sd)
        diag["seeds"].append(d)
    return diag


def phase_seconds(sd: Path) -> dict:
    out: dict = {}
    if not sd.is_dir():  # a seed not started yet (a report of a run in progress)
        return out
    for folder in [sd / "group"] + [p for p in sorted(sd.iterdir()) if p.is_dir() and p.name != "group"]:
        st = _json(folder / "state.json")
        if not st:
            continue
        for name, ph in st.get("phases", {}).items():
            secs = ph.get("seconds") or ph.get("wall_seconds") or ph.get("elapsed")
            if secs is not None:
                out[f"{folder.name}/{name}"] = secs
    return out


def run_heldout(out: Path, a, col: dict) -> dict:
    """Held-out WikiText-103 test loss and BLiMP of every final checkpoint (heldout.py), cached per run."""
    res: dict = {}
    for k in range(a.seeds):
        sd = out / f"seed{k}"
        for r in col["runs"]:
            ck = stage1_dir(sd, r) / "checkpoints"
            dest = sd / "heldout" / f"{r}.json"
            if not dest.exists() and (ck / "latest_checkpointed_iteration.txt").is_file():
                dest.parent.mkdir(parents=True, exist_ok=True)
                print(f"[bench] held-out evaluation of seed {k} {r}", flush=True)
                p = subprocess.run([sys.executable, str(Path(__file__).parent / "heldout.py"), "--load", str(ck),
                                    "--heldout-dir", a.heldout_dir, "--output", str(dest), "--blimp-max", "4000"],
                                   capture_output=True, text=True)  # fmt: skip
                if p.returncode != 0:
                    raise RuntimeError(f"heldout.py failed for {ck}:\n{p.stderr[-2000:]}")
            if dest.exists():
                h = json.loads(dest.read_text())
                res.setdefault(k, {})[r] = {"wikitext103_test": h["wikitext103_test"]["loss"],
                                            "blimp": h["blimp"]["accuracy"]}  # fmt: skip
    return res


def heldout_tables(col: dict, held: dict, a) -> tuple[dict, dict, dict, dict]:
    """Fold held-out final losses into the curves' final values so the same efficiency code applies."""
    for k, per in enumerate(col["seeds"]):
        for r, v in held.get(k, {}).items():
            if per[r]["final"] is not None:
                per[r]["final"]["heldout_wikitext103_test"] = v["wikitext103_test"]
    paper: dict = {"heldout_wikitext103_test": {}}
    budget_runs = ["random"] + [f"random_x{b:g}" for b in a.budget_list[1:]]
    key = "heldout_wikitext103_test"
    for m in SELECTING:
        effs = []
        for per in col["seeds"]:
            if all(per[r]["final"] and key in per[r]["final"] for r in budget_runs + [m]):
                effs.append(budget_efficiency([per[r]["tokens"] for r in budget_runs],
                                              [per[r]["final"][key] for r in budget_runs],
                                              per[m]["final"][key], per[m]["tokens"]))  # fmt: skip
        if effs:
            paper[key][m] = summarize_efficiency(effs)
    finals, diffs = final_table(col, (key,))
    blimp = {r: [held[k][r]["blimp"] for k in held if r in held[k]] for r in col["runs"]}
    return paper, finals, diffs, blimp


def plots(folder: Path, col: dict, a) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    colors = {"random": "grey", "individual": "tab:blue", "quota": "tab:orange", "group": "tab:red",
              "fasttext": "tab:green"}  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, s in zip(axes, SETS):
        for m in METHODS:
            for k, per in enumerate(col["seeds"]):
                xs = [t / 1e6 for t, v in per[m]["curve"] if s in v]
                ys = [v[s] for t, v in per[m]["curve"] if s in v]
                if xs:
                    ax.plot(xs, ys, color=colors[m], alpha=0.8, lw=1, label=m if k == 0 else None)
        for j, r in enumerate(f"random_x{b:g}" for b in a.budget_list[1:]):
            for k, per in enumerate(col["seeds"]):
                xs = [t / 1e6 for t, v in per[r]["curve"] if s in v and t > per["random"]["curve"][0][0]]
                ys = [v[s] for t, v in per[r]["curve"] if s in v and t > per["random"]["curve"][0][0]]
                if xs:
                    ax.plot(xs, ys, color="black", ls=("--", ":")[j % 2], lw=0.8, label=r if k == 0 else None)
        ax.set_title(f"{s} loss")
        ax.set_xlabel("training tokens (M)")
        lo = [per[r]["final"][s] for per in col["seeds"] for r in col["runs"] if per[r]["final"]]
        if lo:
            ax.set_ylim(min(lo) - 0.1, max(lo) + 0.6)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "loss_curves.png", dpi=110)
    plt.close(fig)
    names.append("loss_curves.png")
    # paired final-loss differences to random, per seed, per set
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    done = [per for per in col["seeds"] if all(per[m]["final"] for m in METHODS)]
    for ax, s in zip(axes, SETS):
        for i, m in enumerate(SELECTING):
            d = [per[m]["final"][s] - per["random"]["final"][s] for per in done]
            ax.scatter([i] * len(d), d, color=colors[m])
            if d:
                ax.hlines(np.mean(d), i - 0.3, i + 0.3, color=colors[m])
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(SELECTING)), SELECTING)
        ax.set_title(f"{s}: final loss - random's (per seed)")
    fig.tight_layout()
    fig.savefig(folder / "loss_vs_random.png", dpi=110)
    plt.close(fig)
    names.append("loss_vs_random.png")
    return names


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return f"{v:.{digits}f}"


def _tables(by_set: dict, key: str, fmt, wins: bool = False) -> list[str]:
    """One markdown table per evaluation set: per seed, mean, 95% CI (and wins k of n)."""
    lines = []
    for s, table in by_set.items():
        extra = (" wins |", "---|") if wins else ("", "")
        lines += [
            f"**{s}**",
            "",
            f"| {key} | per seed | mean | 95% CI |{extra[0]}",
            f"|---|---|---|---|{extra[1]}",
        ]
        for name, e in table.items():
            row = f"| {name} | {', '.join(fmt(x) for x in e['per_seed'])} | {fmt(e['mean'])} | "
            row += f"[{fmt(e['ci95'][0])}, {fmt(e['ci95'][1])}] |"
            lines.append(row + (f" {e['wins']} of {e['n']} |" if wins else ""))
        lines.append("")
    return lines


def markdown(res: dict) -> str:
    c = res["config"]
    lines = [
        "# Evidence benchmark: Group-MATES vs random, MATES, quota-only and a fastText filter",
        "",
        f"Command: `{res['command']}` at commit `{res['commit']}` (report written at `{res['report_commit']}`).",
        "",
        *(
            [
                f"**In progress: {res['complete_seeds']} of {len(res['seeds'])} seeds complete** (written at "
                f"{res['written']}); every table below holds only what has finished.",
                "",
            ]
            if res["complete_seeds"] < len(res["seeds"])
            else []
        ),
        "## What this measures",
        "",
        f"- GPT with {c['params']:,} parameters ({c['model']['num_layers']} layers, hidden {c['model']['hidden_size']}, sequence "
        f"{c['model']['seq_length']}, vocabulary {c['vocab_size']}), trained on {c['tokens']:,} tokens = "
        f"**{res['tokens_per_param']:.1f} tokens a parameter** (the paper's 1B-1x ratio is 20), WSD schedule "
        f"(cooldown over the last 20%), {c['stage_iters'][0]} + {c['stage_iters'][1]} iterations of "
        f"{c['tokens_per_iteration']} tokens.",
        f"- Pool: the bundled pool, {c['pool_docs']:,} documents, {c['pool_tokens']:,} tokens: "
        f"{c['pool_tokens'] / c['selected_stage_tokens']:.1f}x what a method's selected stage trains on.",
        "- Stage 0 (a third of the tokens) trains on the whole pool; one selection round at its checkpoint keeps "
        f"{c['ratio']:.0%} of the pool; stage 1 trains on that selection. Seeds: "
        f"{', '.join(map(str, res['seeds']))}.",
        "- The oracle's reference set is the even-numbered articles of WikiText-103 validation "
        f"({c['oracle']['ref_samples']} samples of at most {c['model']['seq_length']} tokens, the same for every seed); "
        "the fastText filter's positives are all of those articles' text.",
        "- Development evaluation (a fixed subset for every seed and method, never seen by the oracle or the "
        "filter): `reference` = the odd-numbered articles of WikiText-103 validation (other articles than "
        "the oracle's), `lambada` = LAMBADA eval half, target-word loss, `pool_valid` = the pool's validation "
        "split (off-target: general ability).",
        f"- Random also trains at {', '.join(f'{b:g}x' for b in res['random_budgets'])} the methods' tokens, each "
        "with its own complete WSD schedule from the shared stage-0 checkpoint.",
        f"- Oracle: {c['oracle']['trajectories']} random + {2 * c['bootstrap']['beams_per_tail']} bootstrap "
        f"trajectories (T=10); influence models chosen on {c['val_count']} validation trajectories.",
        "",
        "## Token efficiency, the paper's way",
        "",
        "Tokens random needs (interpolated in log tokens between its budgets' final losses) to reach the "
        "method's final loss ÷ the method's tokens. `> x`: beyond random's largest budget.",
        "",
    ]
    lines += _tables(res["efficiency"], "method", lambda x: _fmt(x, 2))
    lines += ["## Matched quality (converse)", "",
              "Tokens random used ÷ tokens the method needed to reach random's final loss (on the method's "
              "evaluation curve, an annealing run: indicative only).", ""]  # fmt: skip
    for s, table in res["efficiency_matched_quality"].items():
        lines.append(f"- {s}: " + "; ".join(
            f"{m} {'<= ' if e['never_reached'] else ''}{e['mean']:.2f} [{e['ci95'][0]:.2f}, {e['ci95'][1]:.2f}]"
            + (f" ({e['never_reached']} seed(s) never reached it)" if e["never_reached"] else "")
            for m, e in table.items()))  # fmt: skip
    lines += ["", "## Final losses", ""]
    lines += _tables(res["final_loss"], "run", lambda x: _fmt(x))
    lines += ["## Paired differences (final loss; negative = the first method is better)", ""]
    lines += _tables(res["paired"], "pair", lambda x: f"{x:+.4f}", wins=True)
    lines += ["## Why: influence models, labels, selections", ""]
    for k, d in enumerate(res["diagnostics"]["seeds"]):
        parts = []
        for name in ("group_model", "individual_model"):
            if name in d:
                m = d[name]
                ci = m.get("ci95") or [float("nan")] * 2
                parts.append(f"{name} Spearman {m['spearman']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
                             + (f", without relation {m['no_relation_spearman']:.3f}" if "no_relation_spearman" in m else ""))  # fmt: skip
        if "selections" in d:
            parts.append("mean tokens a selected document: " + ", ".join(
                f"{m} {v['mean_doc_tokens']:.0f}" for m, v in d["selections"].items()))  # fmt: skip
        if "oracle" in d and "labels" in d["oracle"]:
            lab = d["oracle"]["labels"]
            parts.append(
                f"oracle labels mean {lab['mean']:+.2e}, std {lab['std']:.2e}, helpful share {lab['negative_share']:.2f}"
            )
        if "overlap_with_group" in d:
            parts.append(
                "overlap with group's selection: "
                + ", ".join(f"{m} {v:.2f}" for m, v in d["overlap_with_group"].items())
            )
        lines.append(f"- seed {k}: " + "; ".join(parts))
    if res.get("heldout"):
        lines += ["", "## Held out (read once, for this report)", ""]
        h = res["heldout_results"]
        lines += ["Token efficiency, the paper's way (as above):", ""]
        lines += _tables(h["efficiency"], "method", lambda x: _fmt(x, 2))
        lines += ["Final losses:", "", *_tables(h["final_loss"], "run", lambda x: _fmt(x))]
        lines += ["Paired differences (final loss; negative = the first method is better):", ""]
        lines += _tables(h["paired"], "pair", lambda x: f"{x:+.4f}", wins=True)
        lines += ["| run | BLiMP accuracy (4,000 pairs), mean over seeds |", "|---|---|"]
        lines += [f"| {r} | {np.mean(v):.3f} |" for r, v in h["blimp"].items() if v]
        lines.append("")
        if h.get("clean_share"):
            cs = h["clean_share"]
            pool = cs.get("pool", {})
            runs = list(dict.fromkeys(k.split("/", 1)[1] for k in cs if "/" in k))  # results' order
            seeds = sorted({k.split("/", 1)[0] for k in cs if "/" in k})
            lines += [f"Clean-source share of each selection (the pool: {pool.get('clean_share', float('nan')):.3f} "
                      f"of {pool.get('docs', 0):,} documents):", "",
                      f"| method | {' | '.join(seeds)} |", "|---|" + "---|" * len(seeds)]  # fmt: skip
            for r in runs:
                vals = [cs.get(f"{sd}/{r}", {}).get("clean_share") for sd in seeds]
                lines.append(f"| {r} | {' | '.join(_fmt(v, 3) for v in vals)} |")
            lines.append("")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in res["plots"]]
    return "\n".join(lines) + "\n"


def write_report(out: Path, a, data, heldout: bool = False, results_dir: str = "") -> Path:
    bench = json.loads((out / "benchmark.json").read_text())
    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    col = collect(out, a, bench)
    eff, conv = efficiency_tables(col, a, SETS)
    finals, diffs = final_table(col, SETS)
    first, second = bench["stage_iters"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parents[2], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    res = {
        "commit": bench.get("run_commit") or commit,  # the commit the runs were made at
        "report_commit": commit,
        "command": " ".join(["examples/benchmark/run_benchmark.py", *bench["argv"]]),
        "config": {
            "params": bench["params"],
            "model": a.model,
            "vocab_size": data.vocab_size,
            "stage_iters": bench["stage_iters"],
            "tokens_per_iteration": bench["tokens_per_iteration"],
            "tokens": (first + second) * bench["tokens_per_iteration"],
            "selected_stage_tokens": second * bench["tokens_per_iteration"],
            "pool_tokens": data.pool_tokens,
            "pool_docs": data.pool_docs,
            "ratio": a.ratio,
            "oracle": a.oracle,
            "bootstrap": a.bootstrap,
            "val_count": a.val_count,
            "eval_sizes": a.eval_sizes,
            "quick": a.quick,
            "lr": a.lr,
            "gbs": a.gbs,
        },  # fmt: skip
        "tokens_per_param": (first + second) * bench["tokens_per_iteration"] / bench["params"],
        "seeds": [1234 + 1000 * k for k in range(a.seeds)],
        "methods": list(METHODS),
        "bootstrap_round": bool(a.bootstrap.get("beams_per_tail")),
        "random_budgets": a.budget_list,
        "efficiency": eff,
        "efficiency_matched_quality": conv,
        "final_loss": finals,
        "paired": diffs,
        "complete_seeds": sum(all(per[r]["final"] for r in col["runs"]) for per in col["seeds"]),
        "diagnostics": diagnostics(out, a, data.prefix),
        "heldout": bool(heldout),
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if heldout:
        from heldout import clean_share

        held = run_heldout(out, a, col)
        h_eff, h_final, h_paired, blimp = heldout_tables(col, held, a)
        sels = {f"seed{k}/{m}": stage1_dir(out / f"seed{k}", m) / "selection" for k in range(a.seeds)
                for m in METHODS if (stage1_dir(out / f"seed{k}", m) / "selection" / "documents.npy").is_file()}  # fmt: skip
        res["heldout_results"] = {"efficiency": h_eff, "final_loss": h_final, "paired": h_paired, "blimp": blimp,
                                  "clean_share": clean_share(Path(a.heldout_dir), data.prefix, sels) if sels else {}}  # fmt: skip
    res["plots"] = plots(folder, col, a)
    (folder / "results.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    (folder / "report.md").write_text(markdown(res))
    if results_dir:
        dest = Path(results_dir)
        dest.mkdir(parents=True, exist_ok=True)
        for f in ["results.json", "report.md", *res["plots"]]:
            shutil.copy2(folder / f, dest / f)
    return folder / "report.md"
