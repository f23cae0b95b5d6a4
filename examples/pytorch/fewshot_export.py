"""Read an export of fewshot's fixed episodes (`bench episodes <benchmark>
--export DIR`) and write scores that `bench import` takes back.

An export's `episodes.safetensors` holds support_x [E, N*K, C, H, W],
support_y [E, N*K], query_x [E, N*Q, C, H, W] and query_y [E, N*Q]: the
tensors exactly as fewshot's learner sees them (docs/interop.md). Its
metadata holds the episodes' fingerprint, which `load` recomputes (the
definition in src/data/fingerprint.rs) so that a damaged or edited file is
caught here rather than at import.
"""

import csv
import hashlib
import json
import os

import numpy as np
from safetensors.numpy import load_file

PARTS = ("support_x", "support_y", "query_x", "query_y")


def fingerprint(t):
    """sha256 of the per-episode sha256 digests of the four tensors' bytes."""
    digests = b""
    for e in range(t["support_x"].shape[0]):
        h = hashlib.sha256()
        for name in PARTS:
            h.update(np.ascontiguousarray(t[name][e]).tobytes())
        digests += h.digest()
    return "sha256:" + hashlib.sha256(digests).hexdigest()


def load(folder):
    """(tensors, metadata) of an export folder, fingerprint checked."""
    t = load_file(os.path.join(folder, "episodes.safetensors"))
    with open(os.path.join(folder, "export.json")) as f:
        meta = json.load(f)
    got = fingerprint(t)
    if got != meta["fingerprint"]:
        raise SystemExit(f"{folder}: the tensors' fingerprint {got} is not the export's {meta['fingerprint']}")
    return t, meta


def write_predictions(path, predictions, meta):
    """`episode,query,prediction,fingerprint`: predictions[e][q] is the label
    predicted for query_x[e][q] (whose true label is q // queries)."""
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["episode", "query", "prediction", "fingerprint"])
        for e, row in enumerate(predictions):
            for q, p in enumerate(row):
                w.writerow([e, q, int(p), meta["fingerprint"]])
    os.replace(tmp, path)
