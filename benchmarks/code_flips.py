"""How often attention codes change: random single-token substitutions on test documents.

For each substitution, the fraction of positions per layer whose attention code differs from before
the edit (the substituted position itself included). Runs on an exported model directory.

Usage: python benchmarks/code_flips.py MODEL_DIR [--dataset rotten_tomatoes] [--edits 200]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from vqinc.model.data import load_dataset
from vqinc.runtime.model import Model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("--dataset", default="rotten_tomatoes")
    p.add_argument("--edits", type=int, default=200)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    model = Model.load(a.model_dir)
    rng = np.random.default_rng(a.seed)
    test = load_dataset(a.dataset).test
    vocab = model.tokenizer.get_vocab_size()
    fractions, flips_abs = [], []
    while len(fractions) < a.edits:
        ex = test[int(rng.integers(len(test)))]
        ids = model.tokenizer.encode(ex.text, add_special_tokens=False).ids[: a.max_tokens]
        if len(ids) < 2:
            continue
        doc = model.document_ids(ids)
        before = doc.codes
        pos = int(rng.integers(len(ids)))
        doc.edit_tokens(pos, 1, [int(rng.integers(1, vocab))])
        changed = (doc.codes != before).any(axis=2)  # (L, n): any head's code changed
        fractions.append(changed.mean(axis=1))
        flips_abs.append(changed.sum(axis=1))
    f = np.mean(fractions, axis=0)
    out = {"model_dir": a.model_dir, "edits": a.edits, "dataset": a.dataset,
           "mean_fraction_changed_per_layer": [round(float(x), 4) for x in f],
           "mean_positions_changed_per_layer": [round(float(x), 2) for x in np.mean(flips_abs, axis=0)]}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
