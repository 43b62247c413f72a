"""Digest every artifact of a run folder, to show that a refactor leaves them byte-identical.

    python benchmarks/artifact_digest.py RUN --tree TREE --out digest.json
    python benchmarks/artifact_digest.py --compare before.json after.json

Binary files are hashed byte for byte. Some kinds are hashed by content instead, because their bytes
carry the time they were written or the folder they were written in: ``.npz`` (zip entries carry a
timestamp; hashed over each array's name, dtype, shape and bytes), ``.json`` (hashed canonically, without
wall-clock keys such as ``seconds`` or ``per_second``), Megatron's distributed checkpoints (one entry a
checkpoint folder, loaded with torch.distributed.checkpoint: every tensor's bytes and every other value)
and DeepSpeed's ``.pt`` files (loaded the same way). In all of them the run folder and the source tree are
replaced by placeholders, so two runs in different folders compare. Logs, locks and progress state are
listed as skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import sys
import zipfile

import numpy as np

SKIP_DIRS = {"logs", "__pycache__"}
SKIP_SUFFIXES = (".lock", ".log", ".done", ".txt")
SKIP_NAMES = {"state.json", "run.json", "gm_eval.jsonl"}
# wall-clock words: a key is skipped when one of its "_"-separated words starts with one of them
# (seconds, epoch_times, trajectories_per_hour, ...) or its last word is "s" (probe_train_step_s)
VOLATILE = ("second", "time", "elapsed", "date", "host", "pid", "wall", "rate", "throughput", "hour")


def _volatile(key) -> bool:
    words = str(key).lower().split("_")
    return words[-1] == "s" or any(w.startswith(VOLATILE) for w in words)


def _strip(obj, subs: list[tuple[str, str]]):
    if isinstance(obj, dict):
        return {k: _strip(v, subs) for k, v in obj.items() if not _volatile(k)}
    if isinstance(obj, list):
        return [_strip(v, subs) for v in obj]
    if isinstance(obj, str):
        for old, new in subs:
            obj = obj.replace(old, new)
    return obj


def _torch_update(h, obj, subs: list[tuple[str, str]]) -> None:
    """Feed a loaded checkpoint to ``h``: tensors by bytes, containers in order, other values by repr."""
    import argparse

    import torch

    if torch.is_tensor(obj):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, argparse.Namespace):
        _torch_update(h, vars(obj), subs)
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            if not _volatile(k):  # DeepSpeed's client state holds epoch_times
                h.update(f"K{k}".encode())
                _torch_update(h, obj[k], subs)
    elif isinstance(obj, list | tuple):
        h.update(b"[")
        for v in obj:
            _torch_update(h, v, subs)
        h.update(b"]")
    elif isinstance(obj, str):
        h.update(repr(_strip(obj, subs)).encode())
    else:
        h.update(repr(obj).encode())


def digest_dcp(folder: str, subs: list[tuple[str, str]]) -> str:
    """A Megatron distributed checkpoint folder, by content (torch.distributed.checkpoint, no process group)."""
    import tempfile

    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    h = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(folder, os.path.join(tmp, "ckpt.pt"))
        _torch_update(h, torch.load(os.path.join(tmp, "ckpt.pt"), weights_only=False), subs)
    return h.hexdigest()[:16]


def digest_file(path: str, subs: list[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    if path.endswith(".pt"):
        import torch

        _torch_update(h, torch.load(path, map_location="cpu", weights_only=False), subs)
    elif path.endswith(".npz"):
        with open(path, "rb") as f, zipfile.ZipFile(io.BytesIO(f.read())) as z:
            for name in sorted(z.namelist()):
                a = np.load(io.BytesIO(z.read(name)), allow_pickle=False)
                h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
                h.update(np.ascontiguousarray(a).tobytes())
    elif path.endswith(".json"):
        with open(path) as f:
            h.update(json.dumps(_strip(json.load(f), subs), sort_keys=True).encode())
    else:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def digest_run(run: str, tree: str) -> dict:
    run, tree = os.path.realpath(run), os.path.realpath(tree)
    subs = [(run, "<RUN>"), (tree, "<TREE>")]
    files, skipped = {}, []
    for dirpath, dirnames, filenames in os.walk(run):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        if ".metadata" in filenames:  # a distributed checkpoint: one entry for the folder
            files[os.path.relpath(dirpath, run) + "/"] = digest_dcp(dirpath, subs)
            filenames = [n for n in filenames if n != ".metadata" and not n.endswith(".distcp")]
        for name in sorted(filenames):
            # Megatron names its index caches by a hash of the dataset config, which holds the path
            rel = re.sub(r"\b[0-9a-f]{32}-", "<HASH>-", os.path.relpath(os.path.join(dirpath, name), run))
            if name in SKIP_NAMES or name.endswith(SKIP_SUFFIXES):
                skipped.append(rel)
                continue
            files[rel] = digest_file(os.path.join(dirpath, name), subs)
    return {"run": run, "files": files, "skipped": skipped}


def compare(a: dict, b: dict) -> int:
    fa, fb = a["files"], b["files"]
    only_a, only_b = sorted(set(fa) - set(fb)), sorted(set(fb) - set(fa))
    diff = sorted(k for k in set(fa) & set(fb) if fa[k] != fb[k])
    same = len(set(fa) & set(fb)) - len(diff)
    for k in only_a:
        print(f"only in first:  {k}")
    for k in only_b:
        print(f"only in second: {k}")
    for k in diff:
        print(f"differs:        {k}")
    print(f"{same} identical, {len(diff)} differ, {len(only_a)}+{len(only_b)} unmatched")
    return 0 if not (diff or only_a or only_b) else 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", help="run folder to digest")
    p.add_argument("--tree", default=".", help="source tree the run was made from (replaced in paths)")
    p.add_argument("--out", help="write the digest here (default: stdout)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two digest files")
    args = p.parse_args()
    if args.compare:
        with open(args.compare[0]) as f, open(args.compare[1]) as g:
            sys.exit(compare(json.load(f), json.load(g)))
    if not args.run or not os.path.isdir(args.run):
        sys.exit(f"error: {args.run}: not a run folder; pass the folder a pipeline run wrote")
    text = json.dumps(digest_run(args.run, args.tree), indent=1, sort_keys=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
