"""A DCLM-style fastText quality filter, written as a pool-scores folder (``tools/quality_filter.py``).

fastText is trained (one thread, fixed seed: same bytes every run) on reference text (``--positives``) vs
pool documents drawn uniformly without replacement by ``numpy.random.default_rng(seed)``; ``--holdout`` of
the labelled examples gives precision/recall. Every pool document (decoded with the tokenizer of the
dataset's sidecar, EOD removed, lower-cased, whitespace collapsed as in DCLM) gets
``s = -(log P(pos) - log P(neg))``, the exact logit from the output matrix (``predict`` saturates at 1e-5
and would tie documents): lower s is more reference-like. h is copied from ``--h-from`` (scores of the same
dataset), so clusters and budgets equal the influence-model methods'. ``--output OUT`` holds the scores
shards and manifest (model hash = sha256 of the model), ``fasttext.bin`` and ``quality_filter.json``
(inputs, flags, counts, metrics, seconds); it is built in ``.OUT.tmp<pid>`` and renamed, and a rerun on
a finished OUT is a no-op. Select with ``tools/select_data.py --scores-from OUT --gm-select-method
individual --gm-select-temperature 0``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from megatron_gm.config import check_settings, setting
from megatron_gm.data.jsonl import iter_lines, parse_record
from megatron_gm.dist import get_logger
from megatron_gm.errors import GMError
from megatron_gm.fs import atomic_write_text, sha256_file
from megatron_gm.selection.score_store import open_scores, read_shard, write_scores

LOG = get_logger(__name__)
POS, NEG = "__label__pos", "__label__neg"
MODEL_FILE, REPORT_FILE = "fasttext.bin", "quality_filter.json"
FT_ARGS = {"dim": "dim", "epoch": "epoch", "lr": "lr", "wordNgrams": "word_ngrams", "minCount": "min_count"}
FT_ARGS |= {"bucket": "bucket", "seed": "seed"}  # fastText's name -> ours
FIXED = {"loss": "softmax", "thread": 1}  # one thread: the same model bytes every run


@dataclasses.dataclass
class FilterConfig:
    """The filter's settings; each field is the flag ``--<field>`` of quality_filter.py. The fields after
    ``text_key`` are the hyper-parameters recorded with the model (``hyper``)."""

    data_path: str = setting(help="dataset prefix (the .bin/.idx without extension)")
    positives: str = setting(help="reference documents, .jsonl or .jsonl.gz")
    h_from: str = setting(help="a finished scores folder of this dataset: h is copied")
    output: str = setting(help="scores folder to write (must not exist, or be finished)")
    text_key: str = setting("text", "key of the text in --positives")
    negatives_per_positive: float = setting(
        4.0, "pool documents drawn as negatives per positive (capped at the pool)", above=0
    )
    seed: int = setting(1234, "negatives, held-out split and fastText seed", low=0, high=2**31 - 1)
    epoch: int = setting(5, "fastText epoch", low=1)
    dim: int = setting(64, "fastText dim", low=1)
    word_ngrams: int = setting(2, "fastText word_ngrams", low=1)
    min_count: int = setting(2, "fastText min_count", low=1)
    lr: float = setting(0.1, "fastText lr", above=0)
    # hashed word n-gram rows (fastText's 2M makes a 512 MB model at dim 64)
    bucket: int = setting(100_000, "hashed word n-gram rows (model size: bucket x dim x 4 bytes)", low=1)
    holdout: float = setting(0.1, "share held out for metrics", low=0, below=0.5)

    def validate(self) -> FilterConfig:
        check_settings(self)
        return self

    def hyper(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)[5:]} | FIXED


def normalize(text: str) -> str:
    """DCLM's fastText input: lower case, every whitespace run (newlines included) one space."""
    return " ".join(text.replace("\0", " ").lower().split())


def read_positives(path: str, key: str) -> tuple[list[str], dict[str, int]]:
    """Normalised non-empty texts under ``key``; skipped lines counted by reason."""
    texts, skipped = [], {}
    for line in iter_lines(path):
        status, rec = parse_record(line, [key])
        text = normalize(rec[key]) if status == "ok" else ""
        if status == "ok" and not text:
            status = "empty"
        if status != "ok":
            skipped[status] = skipped.get(status, 0) + 1
            continue
        texts.append(text)
    if not texts:
        raise GMError(
            f"{path}: no usable positives (no non-empty --text-key {key!r} in any line; skipped {skipped}); "
            "pass a jsonl of reference documents"
        )
    return texts, skipped


class Pool:
    """The documents of a Megatron indexed dataset as normalised text, in the dataset's order."""

    def __init__(self, prefix: str):
        from megatron_gm.data.documents import dataset_and_tokenizer
        from megatron_gm.data.indexed import load_dataset_info

        self.info = load_dataset_info(prefix)
        self.ds, self.tokenizer, _ = dataset_and_tokenizer(str(prefix))
        self.bounds = np.asarray(self.ds.document_indices, dtype=np.int64)
        self.num_docs = len(self.bounds) - 1
        if self.num_docs != int(self.info.num_docs):
            raise GMError(
                f"{prefix}.gm.json: records {self.info.num_docs} documents, the dataset has {self.num_docs}; "
                "rerun tools/preprocess_data.py"
            )
        self.eod = getattr(self.tokenizer, "eod", None)

    def text(self, i: int) -> str:
        lo, hi = int(self.bounds[i]), int(self.bounds[i + 1])
        ids = [t for j in range(lo, hi) for t in self.ds[j].tolist()]
        while ids and ids[-1] == self.eod:
            ids.pop()
        return normalize(self.tokenizer.detokenize(ids)) if ids else ""


def load_h(h_from: str, fingerprint: str, num_docs: int) -> tuple[np.ndarray, int]:
    """h of every document from a finished scores folder of this dataset, and its shard size."""
    shards, man = open_scores(h_from)
    if man.dataset_fingerprint != fingerprint or int(man.config["num_docs"]) != num_docs:
        raise GMError(
            f"--h-from {h_from}: scores of dataset {man.dataset_fingerprint} ({man.config['num_docs']} docs), "
            f"--data-path is {fingerprint} ({num_docs} docs); pass a scores folder of this dataset"
        )
    h = np.concatenate([read_shard(shards, i, man.config)["h"] for i in range(shards.num_shards)])
    return h, int(man.config["shard_size"])


def train(lines: list[str], cfg: FilterConfig, workdir: Path):
    """A fastText classifier on ``__label__x text`` lines, one thread, seeded (same bytes every run)."""
    import fasttext

    path = workdir / "train.txt"
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    try:
        return fasttext.train_supervised(
            str(path),
            **{ft: getattr(cfg, name) for ft, name in FT_ARGS.items()},
            **FIXED,
            verbose=0,
        )
    except (RuntimeError, ValueError) as e:
        raise GMError(
            f"{cfg.positives}: fastText training failed ({e}); use more positives or --min-count 1"
        ) from e
    finally:
        path.unlink(missing_ok=True)


def logit_fn(model):
    """text -> log P(pos) - log P(neg), exactly (softmax over the two labels of the output layer)."""
    labels = list(model.labels)
    out = model.get_output_matrix().astype(np.float64)
    w = out[labels.index(POS)] - out[labels.index(NEG)]
    return lambda text: float(w @ model.get_sentence_vector(text).astype(np.float64))


def run_key(cfg: FilterConfig, fingerprint: str, h_from: str) -> dict:
    """What the output depends on; a finished OUT with another key is refused."""
    return {
        "dataset_fingerprint": fingerprint,
        "positives_sha256": sha256_file(cfg.positives),
        "text_key": cfg.text_key,
        "h_from_manifest_sha256": sha256_file(Path(h_from) / "manifest.json"),
        "hyper": cfg.hyper(),
        "fasttext": "fasttext-community 0.11.9",
    }


def already_done(out: Path, key: dict) -> bool:
    if not out.exists():
        return False
    try:
        old = json.loads((out / REPORT_FILE).read_text())["key"]
        open_scores(out)
    except (OSError, ValueError, KeyError, GMError) as e:
        raise GMError(
            f"{out}: exists and is not a finished quality-filter output; delete it or pick --output"
        ) from e
    if old != key:
        raise GMError(f"{out}: was made from other inputs or flags; choose another --output or delete it")
    return True


def holdout_metrics(logit, texts: list[str], truth: np.ndarray) -> dict:
    """Precision and recall of ``pos`` (predicted where the logit is > 0) on held-out examples."""
    pred = np.array([logit(t) > 0 for t in texts], dtype=bool)
    tp = int((pred & truth).sum())
    return {
        "examples": len(texts),
        "precision": tp / int(pred.sum()) if pred.any() else None,
        "recall": tp / int(truth.sum()) if truth.any() else None,
        "accuracy": float((pred == truth).mean()) if len(texts) else None,
    }


def run_filter(cfg: FilterConfig) -> dict | None:
    """Build ``cfg.output``; return its report (None when it was already finished)."""
    cfg.validate()
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        seconds[name] = round(time.perf_counter() - t0 - sum(seconds.values()), 3)

    if not Path(cfg.positives).is_file():
        raise GMError(f"--positives {cfg.positives}: not found; pass a .jsonl or .jsonl.gz of reference text")
    if not Path(cfg.h_from, "manifest.json").is_file():
        raise GMError(f"--h-from {cfg.h_from}: not a scores folder (no manifest.json); pass a finished one")
    pool = Pool(cfg.data_path)
    fingerprint, n, out = pool.info.fingerprint, pool.num_docs, Path(cfg.output)
    key = run_key(cfg, fingerprint, cfg.h_from)
    if already_done(out, key):
        LOG.info("%s: already finished with these inputs and flags; nothing to do", out)
        return None
    h, shard_size = load_h(cfg.h_from, fingerprint, n)
    positives, skipped = read_positives(cfg.positives, cfg.text_key)
    LOG.info(
        "%d positives from %s (skipped %s); pool of %d documents", len(positives), cfg.positives, skipped, n
    )
    rng = np.random.default_rng(cfg.seed)
    num_neg = min(n, int(round(cfg.negatives_per_positive * len(positives))))
    texts = positives + [pool.text(int(i)) for i in np.sort(rng.choice(n, size=num_neg, replace=False))]
    truth = np.arange(len(texts)) < len(positives)
    order = rng.permutation(len(texts))
    n_hold = int(cfg.holdout * len(texts))
    hold, fit = order[:n_hold], order[n_hold:]
    lap("read")
    LOG.info("%d negatives decoded; training on %d examples, %d held out", num_neg, len(fit), n_hold)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.tmp*"):  # left by a run killed while writing
        shutil.rmtree(stale, ignore_errors=True)
    work = out.parent / f".{out.name}.tmp{os.getpid()}"
    work.mkdir()
    try:
        model = train([f"{POS if truth[i] else NEG} {texts[i]}" for i in fit], cfg, work)
        if set(model.labels) != {POS, NEG}:
            raise GMError(
                f"{cfg.positives}: training saw one label only; use more positives or less --holdout"
            )
        model.save_model(str(work / MODEL_FILE))
        model_hash = sha256_file(work / MODEL_FILE)
        logit = logit_fn(model)
        metrics = holdout_metrics(logit, [texts[i] for i in hold], truth[hold])
        lap("train")
        LOG.info("fastText model %s; held-out: %s", model_hash[:16], metrics)
        s = np.empty(n, dtype=np.float64)
        for i in range(n):
            s[i] = -logit(pool.text(i))
            if (i + 1) * 10 // n > i * 10 // n:  # every tenth of the pool
                LOG.info("scored %d/%d documents (%.1f s)", i + 1, n, time.perf_counter() - t0)
        lap("score")
        final = work / "out"
        meta = {"alpha": 1.0, "tau": 1.0, "dataset_fingerprint": fingerprint, "model_hash": model_hash}
        write_scores(final, h, s.astype(np.float32), shard_size=shard_size, **meta)
        os.replace(work / MODEL_FILE, final / MODEL_FILE)
        lap("write")
        counts = {"pool_docs": n, "positives": len(positives), "positives_skipped": skipped}
        counts |= {"negatives": num_neg, "train_examples": len(fit), "holdout_examples": n_hold}
        report = {
            "key": key,
            "inputs": {"data_path": cfg.data_path, "positives": cfg.positives, "h_from": cfg.h_from},
            "model_sha256": model_hash,
            "counts": counts,
            "holdout": metrics,
            "s": {"min": float(s.min()), "median": float(np.median(s)), "max": float(s.max())},
            "seconds": seconds,
        }
        atomic_write_text(final / REPORT_FILE, json.dumps(report, indent=2, sort_keys=True) + "\n")
        os.replace(final, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    LOG.info("wrote %s (%d documents) in %.1f s; seconds %s", out, n, time.perf_counter() - t0, seconds)
    return report
