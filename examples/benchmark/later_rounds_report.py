"""The later-rounds benchmark's measurements and report: OUT/report/{results.json, report.md, stage2_curves.png}.

Reads per seed: the test-store Spearman of every model (``score_models`` writes seed{k}/spearman.json), the
influence models' own validation Spearman, the selections, the stage-2 evaluation logs beside the evidence's
group (one_round) and random twin, the stage-2 training log (LR schedule check), the phases' state.json
(wall seconds) and the cost model's FLOPs of the round's phases.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from later_rounds_logic import ROUND, jaccard, learning_rates, paired_by_seed, ratio, schedule_check

from megatron_gm.stats import bootstrap_ci

SETS = ("reference", "lambada", "pool_valid")
MODELS = ("stale", "full", "cheap", "cheap_cold", "full_random_only", "cheap_random_only")
RUNS = ("one_round", "restart", "full", "cheap", "random")
SPEARMAN_PAIRS = (("cheap", "full"), ("cheap_cold", "full"), ("cheap", "cheap_cold"), ("stale", "full"),
                  ("stale", "cheap"))  # fmt: skip
LOSS_PAIRS = (("full", "one_round"), ("cheap", "one_round"), ("cheap", "full"), ("full", "restart"),
              ("cheap", "restart"), ("restart", "one_round"), ("full", "random"), ("cheap", "random"),
              ("one_round", "random"))  # fmt: skip


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def model_folders(p: dict) -> dict[str, Path]:
    """Each model to score; with a bootstrap round, also full's and cheap's first models (random trajectories
    only), which are otherwise the final ones."""
    sd, last = p["sd"], p["round1"].name  # influence_bootstrap (or influence without a bootstrap round)
    out = {"stale": p["round1"], "full": sd / "full" / last, "cheap": sd / "cheap" / last,
           "cheap_cold": sd / "cheap_cold" / last}  # fmt: skip
    if last != "influence":
        out.update(full_random_only=sd / "full" / "influence", cheap_random_only=sd / "cheap" / "influence")
    return out


def score_models(p: dict) -> dict:
    """Every finished model's Spearman on the seed's test store (cached in seed{k}/spearman.json by the
    digests of model and store: a rerun scores only what changed)."""
    from later_rounds_spearman import test_spearman

    from megatron_gm.manifest import Manifest

    sd, store = p["sd"], p["sd"] / "test" / "oracle"
    path = sd / "spearman.json"
    have = _json(path) or {}
    if not (store / "manifest.json").is_file():
        return have
    store_digest = Manifest.load(store / "manifest.json").digest()
    for name, folder in model_folders(p).items():
        if not (folder / "manifest.json").is_file():
            continue
        digest = Manifest.load(folder / "manifest.json").digest()
        old = have.get(name, {})
        if old.get("model_digest") == digest and old.get("store_digest") == store_digest:
            continue
        t0 = time.monotonic()
        r = test_spearman(folder, store, p["cfg"].data_path, sd / "test" / "embeddings")
        have[name] = {**r, "store_digest": store_digest, "model": str(folder)}
        print(f"[levers] {sd.name}: {name} model, test Spearman {r['spearman']:.4f} "
              f"[{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}] ({time.monotonic() - t0:.0f} s)", flush=True)  # fmt: skip
        path.write_text(json.dumps(have, indent=2, sort_keys=True) + "\n")
    return have


def final_row(log: Path, total: int) -> dict | None:
    from megatron_gm.megatron.eval_hook import read_log

    rows = read_log(log) if log.is_file() else []
    return rows[-1] if rows and rows[-1]["iteration"] == total else None


def curve(log: Path, start: int) -> list[tuple[int, dict]]:
    from megatron_gm.megatron.eval_hook import read_log

    rows = read_log(log) if log.is_file() else []
    return [
        (r["iteration"], {s: r["sets"][s]["loss"] for s in r["sets"]})
        for r in rows
        if r["iteration"] >= start
    ]


def eval_logs(p: dict) -> dict[str, Path]:
    g, sd = p["group"], p["sd"]
    return {"one_round": g / "stage1" / "checkpoints" / "gm_eval.jsonl",
            "random": g / "random" / "stage1" / "checkpoints" / "gm_eval.jsonl",
            "full": sd / "full" / "stage2" / "checkpoints" / "gm_eval.jsonl",
            "cheap": sd / "cheap" / "stage2" / "checkpoints" / "gm_eval.jsonl",
            "restart": sd / "restart" / "stage2" / "checkpoints" / "gm_eval.jsonl"}  # fmt: skip


def selections(p: dict) -> dict[str, np.ndarray]:
    g, sd = p["group"], p["sd"]
    folders = {"round1": g / "stage1" / "selection", "random": g / "random" / "stage1" / "selection",
               "full": sd / "full" / "stage2" / "selection", "cheap": sd / "cheap" / "stage2" / "selection"}  # fmt: skip
    return {k: np.load(f / "documents.npy") for k, f in folders.items() if (f / "manifest.json").is_file()}


def phase_costs(p: dict, name: str) -> dict:
    """Measured wall seconds of a variant's phases (its state.json) and the cost model's FLOPs and seconds."""
    import copy

    from megatron_gm.pipeline.estimate import CPU, estimate_phase, pool_stats

    st = (_json(p["sd"] / name / "state.json") or {}).get("phases", {})
    c = copy.deepcopy(p["configs"].get(name, p["cfg"]))
    c.train.stage_iters = p["total"] - p["at"]  # stage 2's length, for the pretraining estimate
    pool = pool_stats(c)
    out = {}
    for ph in p["phases"][name]:
        e = estimate_phase(c, ph, pool, CPU)
        rec = st.get(ph.name, {})
        done = rec.get("status") == "done"
        out[ph.name] = {"seconds": rec.get("seconds") if done else None,
                        "cpu_seconds": rec.get("cpu_seconds") if done else None, "model_flops": e.flops, "model_seconds": e.seconds,
                        "note": e.note}  # fmt: skip
    return out


def round_total(costs: dict, key: str) -> float | None:
    vals = [costs[n][key] for n in ROUND if n in costs]
    return None if not vals or any(v is None for v in vals) else float(sum(vals))


def stage2_checks(p: dict, name: str) -> dict | None:
    """Did stage 2 resume at the round's iteration, end at the run's end, and continue round 1's LR schedule?"""
    from megatron_gm.pipeline.plan import checkpoint_iteration

    log = p["sd"] / name / "logs" / "pretrain.log"
    ref_log = p["group"] / "logs" / "stage1.pretrain.log"
    if not log.is_file() or not ref_log.is_file():
        return None
    text = log.read_text(errors="replace")
    lrs, total = learning_rates(text)
    ref, _ = learning_rates(ref_log.read_text(errors="replace"))
    out = schedule_check(lrs, total, ref, p["at"], p["total"])
    out["checkpoint_iteration"] = checkpoint_iteration(p["sd"] / name / "stage2" / "checkpoints")
    # round 2's selection is made at the stage's start; restart trains on round 1's, made at stage 1's start
    out["selection_iteration_warning"] = "was made from the checkpoint at iteration" in text
    out["ok"] = bool(out["ok"] and out["checkpoint_iteration"] == str(p["total"])
                     and (name == "restart" or not out["selection_iteration_warning"]))  # fmt: skip
    return out


def collect_seed(p: dict) -> dict:
    d: dict = {
        "at_iteration": p["at"],
        "total_iterations": p["total"],
        "spearman": _json(p["sd"] / "spearman.json") or {},
    }
    d["val_spearman"] = {}
    for name, folder in model_folders(p).items():
        m = _json(folder / "metrics.json")
        if m:
            d["val_spearman"][name] = {"spearman": m["main"]["best"]["spearman"], "val_trajectories": m["val_trajectories"],
                                       "train_trajectories": m["train_trajectories"]}  # fmt: skip
    sels = selections(p)
    d["selection_sizes"] = {k: int(v.size) for k, v in sels.items()}
    d["jaccard"] = {f"{x} ~ {y}": jaccard(sels[x], sels[y]) for x, y in
                    (("cheap", "full"), ("round1", "full"), ("round1", "cheap"), ("random", "full")) if x in sels and y in sels}  # fmt: skip
    d["final"], d["final_lambada_accuracy"], d["curves"] = {}, {}, {}
    for run, log in eval_logs(p).items():
        f = final_row(log, p["total"])
        d["final"][run] = {s: f["sets"][s]["loss"] for s in f["sets"]} if f else None
        d["final_lambada_accuracy"][run] = (
            f["sets"]["lambada"]["accuracy"] if f and "lambada" in f["sets"] else None
        )
        d["curves"][run] = curve(log, p["at"])
    d["stage2_checks"] = {v: stage2_checks(p, v) for v in ("full", "cheap", "restart")}
    d["costs"] = {v: phase_costs(p, v) for v in p["phases"]}
    d["round_seconds"] = {v: round_total(d["costs"][v], "seconds") for v in ("full", "cheap")}
    d["round_cpu_seconds"] = {v: round_total(d["costs"][v], "cpu_seconds") for v in ("full", "cheap")}
    d["round_model_flops"] = {v: round_total(d["costs"][v], "model_flops") for v in ("full", "cheap")}
    d["round_model_seconds"] = {v: round_total(d["costs"][v], "model_seconds") for v in ("full", "cheap")}
    g_state = (_json(p["group"] / "state.json") or {}).get("phases", {})
    d["round1_seconds"] = {k: v.get("seconds") for k, v in g_state.items()
                           if k.startswith("stage0.") and not k.endswith("pretrain") or k == "stage1.select"}  # fmt: skip
    return d


def _mean_ci(v: list[float]) -> dict | None:
    if not v:
        return None
    lo, hi = bootstrap_ci(v)
    return {"per_seed": v, "mean": float(np.mean(v)), "ci95": [lo, hi]}


def summarize(per: dict[int, dict]) -> dict:
    seeds = sorted(per)

    def col(get) -> list:
        out = []
        for k in seeds:
            try:
                out.append(get(per[k]))
            except (KeyError, TypeError):
                out.append(None)
        return out

    s: dict = {
        "seeds": seeds,
        "spearman": {},
        "spearman_paired": {},
        "final": {},
        "final_paired": {},
        "cost": {},
    }
    for m in MODELS:
        v = col(lambda d, m=m: d["spearman"][m]["spearman"])
        s["spearman"][m] = _mean_ci([x for x in v if x is not None])
    for x, y in SPEARMAN_PAIRS:
        s["spearman_paired"][f"{x} - {y}"] = paired_by_seed(col(lambda d, x=x: d["spearman"][x]["spearman"]),
                                                            col(lambda d, y=y: d["spearman"][y]["spearman"]), True)  # fmt: skip
    for st in SETS:
        s["final"][st] = {
            r: _mean_ci([x for x in col(lambda d, r=r, st=st: d["final"][r][st]) if x is not None])
            for r in RUNS
        }
        s["final_paired"][st] = {f"{x} - {y}": paired_by_seed(col(lambda d, x=x, st=st: d["final"][x][st]),
                                                              col(lambda d, y=y, st=st: d["final"][y][st]))
                                 for x, y in LOSS_PAIRS}  # fmt: skip
    for key in ("round_seconds", "round_cpu_seconds", "round_model_flops", "round_model_seconds"):
        full, cheap = col(lambda d, key=key: d[key]["full"]), col(lambda d, key=key: d[key]["cheap"])
        both = [(f, c) for f, c in zip(full, cheap) if f is not None and c is not None]
        s["cost"][key] = {"full": _mean_ci([f for f, _ in both]), "cheap": _mean_ci([c for _, c in both]),
                          "ratio_per_seed": [ratio(c, f) for f, c in both],
                          "ratio_of_means": ratio(sum(c for _, c in both), sum(f for f, _ in both)) if both else None}  # fmt: skip
    s["jaccard"] = {}
    for key in ("cheap ~ full", "round1 ~ full", "round1 ~ cheap", "random ~ full"):
        s["jaccard"][key] = _mean_ci([x for x in col(lambda d, key=key: d["jaccard"][key]) if x is not None])
    return s


# --- report.md and the plot ------------------------------------------------------------------------------


def _f(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _ci(e: dict | None, digits: int = 4) -> str:
    if not e:
        return "-"
    return f"{_f(e['mean'], digits)} [{_f(e['ci95'][0], digits)}, {_f(e['ci95'][1], digits)}]"


def _paired_rows(table: dict, digits: int = 4) -> list[str]:
    rows = []
    for name, e in table.items():
        if e:
            per = ", ".join(f"{x:+.{digits}f}" for x in e["per_seed"])
            rows.append(f"| {name} | {per} | {e['mean']:+.{digits}f} | [{e['ci95'][0]:+.{digits}f}, "
                        f"{e['ci95'][1]:+.{digits}f}] | {e['wins']} of {e['n']} |")  # fmt: skip
    return rows


def markdown(res: dict) -> str:
    s, per, c = res["summary"], res["per_seed"], res["config"]
    seeds = s["seeds"]
    ats = sorted({per[str(k)]["at_iteration"] for k in seeds}) if seeds else []
    total = per[str(seeds[0])]["total_iterations"] if seeds else "?"
    L = [
        "# Later selection rounds: full vs cheap (issue #13, item 3)",
        "",
        f"Command: `{res['command']}` at commit `{res['commit']}`; evidence run `{c['evidence']}`; written {res['written']}.",
        f"Seeds complete (both stage-2 runs finished): {', '.join(map(str, seeds)) or 'none yet'}; the run's seeds: "
        f"{', '.join(map(str, c['seeds']))}.",
        "",
        f"Round 2 starts from group's stage-1 checkpoint at iteration {', '.join(map(str, ats))} of {total} (the saved one "
        "nearest 3/4 of training); stage 2 trains from there to the end on round 2's selection, the checkpoint's LR "
        "schedule continuing. **one_round** is the evidence's group run itself (round 1's selection to the end), "
        "**random** its random twin: both at the same tokens as stage 2's end. **restart** (a control) trains stage 2 "
        "on round 1's selection: a new stage draws a new data order (and may repeat documents stage 1 saw), which "
        "one_round's continuing stage does not; full - restart is what the new selection itself changes.",
        "",
        f"- **full**: round 2 like round 1: {c['full']['trajectories']} random trajectories + 2 x {c['full']['beams']} "
        f"bootstrap beams (T={c['T']}) on the new checkpoint, influence model trained from scratch "
        f"({c['full']['val_count']} validation trajectories), group selection of {c['ratio']:.0%} of the pool.",
        f"- **cheap**: `oracle.later_round_fraction={c['fraction']}`: {c['cheap']['trajectories']} random trajectories + "
        f"2 x {c['cheap']['beams']} beams, the influence model warm-started from round 1's (`influence.warm_start`; "
        f"validation trajectories scaled to {c['cheap']['val_count']}), then the same selection and stage 2.",
        "- **cheap_cold** (Spearman only): cheap's two stores, the model trained from scratch: warm start alone.",
        "- **stale**: round 1's final model, as is.",
        "- `influence.freeze_encoder_after_first_round` is moot here: the models are fast mode (frozen MiniLM) in "
        "every round, so there is no fine-tuned encoder to freeze; the lever only matters in full mode.",
        "",
        "## Influence-model Spearman on a common test store",
        "",
        f"Test store: {c['test_trajectories']} random trajectories (T={c['T']}) of another oracle seed (round 1's + "
        f"{c['test_seed_offset']}) on the same checkpoint, unseen by every model; scored by the training tool's own "
        "`Run.evaluate` (Spearman over all positions), 95% CI resampling trajectories.",
        "",
        "| model | " + " | ".join(f"seed {k}" for k in seeds) + " | mean over seeds [95% CI] |",
        "|---|" + "---|" * len(seeds) + "---|",
    ]
    for m in MODELS:
        cells = []
        for k in seeds:
            r = per[str(k)]["spearman"].get(m)
            cells.append(f"{r['spearman']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]" if r else "-")
        if any(x != "-" for x in cells):
            L.append(f"| {m} | " + " | ".join(cells) + f" | {_ci(s['spearman'][m], 3)} |")
    L += ["", "Own validation Spearman (each model's held-out split of its own stores, as trained):", "",
          "| model | " + " | ".join(f"seed {k}" for k in seeds) + " |", "|---|" + "---|" * len(seeds)]  # fmt: skip
    for m in MODELS:
        cells = [per[str(k)]["val_spearman"].get(m) for k in seeds]
        if any(cells):
            L.append(
                f"| {m} | "
                + " | ".join(
                    f"{x['spearman']:.3f} ({x['val_trajectories']} val)" if x else "-" for x in cells
                )
                + " |"
            )
    L += ["", "Paired by seed (difference of test Spearman; wins = seeds where the first is higher):", "",
          "| pair | per seed | mean | 95% CI | wins |", "|---|---|---|---|---|", *_paired_rows(s["spearman_paired"], 3), ""]  # fmt: skip
    L += ["## Selections", "", "Jaccard overlap |A ∩ B| / |A ∪ B| (two independent uniform halves: about 0.33):", "",
          "| pair | per seed | mean |", "|---|---|---|"]  # fmt: skip
    for key, e in s["jaccard"].items():
        if e:
            L.append(f"| {key} | {', '.join(f'{x:.3f}' for x in e['per_seed'])} | {e['mean']:.3f} |")
    L += ["", "## Selection quality: final evaluation-pack losses at the run's end", "",
          "| set | " + " | ".join(RUNS) + " |", "|---|" + "---|" * len(RUNS)]  # fmt: skip
    for st in SETS:
        L.append(f"| {st} | " + " | ".join(_ci(s["final"][st][r]) for r in RUNS) + " |")
    for st in SETS:
        L += ["", f"**{st}**: paired differences (lower loss is better; wins = seeds where the first is lower)", "",
              "| pair | per seed | mean | 95% CI | wins |", "|---|---|---|---|---|", *_paired_rows(s["final_paired"][st])]  # fmt: skip
    L += ["", "## Cost of round 2", "", "Wall seconds of the round's phases (oracle, influence, bootstrap, oracle on the "
          "beams, influence on both, selection; from the phases' state.json, on a shared 2-core machine: other jobs' load "
          "shows in the wall seconds more than in the CPU seconds of the phases' processes) and the cost model's FLOPs and seconds (megatron_gm/pipeline/estimate.py, CPU rates):", "",
          "| | full | cheap | cheap / full (per seed) | cheap / full (of the means) |", "|---|---|---|---|---|"]  # fmt: skip
    for key, label in (("round_seconds", "measured wall s"), ("round_cpu_seconds", "measured CPU s"),
                       ("round_model_flops", "modelled FLOPs"),
                       ("round_model_seconds", "modelled s")):  # fmt: skip
        e = s["cost"][key]
        fmt = (lambda v: f"{v:.3g}") if key == "round_model_flops" else (lambda v: f"{v:.0f}")
        ratios = ", ".join(f"{r:.2f}" for r in e["ratio_per_seed"] if r is not None)
        L.append(f"| {label} | {fmt(e['full']['mean']) if e['full'] else '-'} | {fmt(e['cheap']['mean']) if e['cheap'] else '-'} "
                 f"| {ratios or '-'} | {_f(e['ratio_of_means'], 2)} |")  # fmt: skip
    L += ["", "Per phase (mean over seeds; measured s / modelled s / modelled FLOPs):", "",
          "| phase | full | cheap |", "|---|---|---|"]  # fmt: skip
    names = [n for n in per[str(seeds[0])]["costs"].get("full", {})] if seeds else []
    for n in names:
        cells = []
        for v in ("full", "cheap"):
            recs = [per[str(k)]["costs"].get(v, {}).get(n, {}) for k in seeds]
            secs = [r["seconds"] for r in recs if r.get("seconds") is not None]
            ms = [r["model_seconds"] for r in recs if r]
            mf = [r["model_flops"] for r in recs if r]
            cells.append(f"{np.mean(secs):.0f} / {np.mean(ms):.0f} / {np.mean(mf):.3g}" if secs else "-")
        L.append(
            f"| {n}{' (not in the round: stage 2 itself)' if n == 'pretrain' else ''} | "
            + " | ".join(cells)
            + " |"
        )
    L += ["", "## Checks", ""]
    for k in seeds:
        for v, chk in per[str(k)]["stage2_checks"].items():
            if chk:
                L.append(f"- seed {k} {v}: stage 2 first logged iteration {chk['first_logged_iteration']} (LR "
                         f"{_f(chk['first_lr'], 6)}), --train-iters {chk['train_iters_logged']}, final checkpoint "
                         f"{chk['checkpoint_iteration']}; LR equal to one_round's at {chk['compared_iterations']} logged "
                         f"iterations (max relative difference {_f(chk['max_relative_lr_difference'], 8)}); "
                         f"{'OK' if chk['ok'] else 'NOT OK'}")  # fmt: skip
    L += ["", "## Notes", "", *[f"- {n}" for n in res["notes"]], ""]
    return "\n".join(L)


def plot(folder: Path, per: dict, seeds: list[int]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"one_round": "tab:red", "full": "tab:blue", "cheap": "tab:orange", "random": "grey"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    drawn = False
    for ax, st in zip(axes, SETS):
        for run, color in colors.items():
            for j, k in enumerate(seeds):
                pts = [(i, v[st]) for i, v in per[str(k)]["curves"].get(run, []) if st in v]
                if pts:
                    drawn = True
                    ax.plot(*zip(*pts), color=color, lw=1, alpha=0.8, label=run if j == 0 else None)
        ax.set_title(f"{st} loss, stage 2 (round 2 on)")
        ax.set_xlabel("iteration")
    if not drawn:
        plt.close(fig)
        return None
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "stage2_curves.png", dpi=100)
    plt.close(fig)
    return "stage2_curves.png"


def write_report(out: Path, a, plans: dict[int, dict]) -> Path:
    """``plans``: later_rounds.seed_plan of every seed to report (those started)."""
    import subprocess

    from run_benchmark import ROOT

    seeds = sorted(plans)
    per = {k: collect_seed(plans[k]) for k in seeds}
    # a seed counts once both stage-2 runs have their final evaluation
    done = [k for k in per if all(per[k]["final"].get(v) for v in ("full", "cheap"))]
    s = summarize({k: per[k] for k in done})
    p0 = plans[min(plans)] if plans else None
    cfg = p0["cfg"] if p0 else None
    run = _json(out / "run.json") or {}

    def variant(name):
        from megatron_gm.pipeline.plan import round_count

        c = p0["configs"][name]
        return {"trajectories": round_count(c, 1, c.oracle.trajectories),
                "beams": round_count(c, 1, c.bootstrap.beams_per_tail),
                "val_count": round_count(c, 1, c.influence.val_count) if c.influence.val_count else 0}  # fmt: skip

    config = {"evidence": a.evidence, "seeds": list(a.seeds), "fraction": a.fraction, "test_seed_offset": a.test_seed_offset,
              "test_trajectories": a.test_trajectories or (max(1, round(cfg.oracle.trajectories / 4)) if cfg else None),
              "T": cfg.oracle.T if cfg else None, "ratio": cfg.select.ratio if cfg else None,
              "full": variant("full") if p0 else {}, "cheap": variant("cheap") if p0 else {}}  # fmt: skip
    notes = [f"This run: {a.note}"] if getattr(a, "note", "") else []
    notes += [
        "The test store's labels are z-scored on themselves for the MSE in spearman.json; Spearman does not depend on it.",
        "cheap's influence models see fewer trajectories (fraction of round 1's), so their own validation Spearman "
        "is on fewer trajectories; the test-store Spearman is the comparable number.",
        "Seeds whose full and cheap stage 2 have not both finished are left out of the means and paired tables.",
        "The bootstrap phase costs about the same in both variants: its price is embedding its probing pool "
        "(bootstrap.probe_count documents, not scaled by the fraction), the beams themselves are cheap. Since "
        "b40a380 the bootstrap reads those vectors from the selection's pool-embedding cache when both are keyed "
        "alike (same frozen encoder, threads, batch and shard size; the cost model then counts the beam search "
        "only). This run's bootstrap had no such option, and with the evidence's launch (selection: 2 ranks of "
        "1 thread, bootstrap: 2 threads) it would miss anyway; the modelled cost above counts the embedding.",
        "cheap's warm-started model starts from round 1's heads and trains on few trajectories (its LR schedule "
        "may be all warm-up); how far it moves from round 1's model shows in the round1 ~ cheap overlap.",
    ]
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    res = {"command": " ".join(["examples/benchmark/later_rounds.py", *run.get("argv", [])]), "commit": run.get("run_commit", commit),
           "report_commit": commit, "written": time.strftime("%Y-%m-%d %H:%M"), "config": config,
           "per_seed": {str(k): v for k, v in per.items()}, "complete_seeds": done, "summary": s, "notes": notes}  # fmt: skip
    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    (folder / "report.md").write_text(markdown({**res, "per_seed": {str(k): per[k] for k in done}}))
    plot(folder, {str(k): v for k, v in per.items()}, sorted(per))
    return folder / "report.md"
