"""The ways to get a document's logits back after an edit, each behind the same small interface.

Each contender gets the token ids of the edited text (BOS excluded) and returns logits; vqinc itself
gets the character edit (`Document.edit`), since incremental re-tokenisation is part of what it does.

  ort_full         full.onnx over the whole window (monolithic graph, as exported: plain attention)
  prefix_kv        decoder.onnx, the standard past-KV decoder: cut the cache at the first changed
                   token, run the suffix (runtime/baseline/prefix_kv.py; fused ORT attention where it applies)
  torch_full       PyTorch eager forward of the same VQ model over the whole window
  torch_prefix_kv  PyTorch eager `forward_cached`: the model's own forward fed the cached K/V of the
                   unchanged prefix (Hugging Face's past_key_values pattern)
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import numpy as np

from vqinc.runtime.baseline.prefix_kv import KVDecoder
from vqinc.runtime.format.atomic import replacing_dir
from vqinc.runtime.model_dir import Model
from vqinc.runtime.text.splice import first_difference


class OrtFull:
    name = "ort_full"

    def __init__(self, model: Model):
        self.model = model

    def run(self, ids: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        """Logits of `ids` (BOS excluded) at a fresh document's positions, or at the labels `positions`."""
        full = np.concatenate([np.asarray([self.model.bos_token_id], np.int64), ids])
        labels = None if positions is None else np.concatenate([[0], positions]).astype(np.int64)
        logits, _ = self.model.run_full(full, labels)
        return logits[0]


class PrefixKV:
    """Wraps a KVDocument; `start` of the last run tells how long the reused prefix was."""

    name = "prefix_kv"

    def __init__(self, decoder: KVDecoder, ids: np.ndarray):
        self.doc = decoder.document(ids)
        self.start = 0

    def run(self, ids: np.ndarray) -> np.ndarray:
        self.start = self.doc.set_ids(ids).start
        return self.doc.logits


class TorchFull:
    name = "torch_full"

    def __init__(self, torch_model, bos: int):
        self.m, self.bos = torch_model, bos

    def run(self, ids: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            x = torch.from_numpy(np.concatenate([np.asarray([self.bos], np.int64), ids]))[None]
            return self.m(x).logits[0].numpy()


class TorchPrefixKV:
    """`forward_cached` with a cache kept across edits; `sync` brings it to given ids untimed (used when the
    torch contenders are timed on a subsample of the edits)."""

    name = "torch_prefix_kv"

    def __init__(self, torch_model, bos: int, ids: np.ndarray):
        self.m, self.bos = torch_model, bos
        self.ids = np.zeros(0, np.int64)
        self.cache = None
        self.run(ids)

    def run(self, ids: np.ndarray) -> np.ndarray:
        import torch

        new = np.concatenate([np.asarray([self.bos], np.int64), ids])
        p = first_difference(self.ids, new)
        if p == len(new) == len(self.ids):
            return self.logits
        start = min(p, len(new) - 1)
        with torch.no_grad():
            cache = self.cache.truncate(start) if self.cache is not None and start else None
            logits, self.cache = self.m.forward_cached(torch.from_numpy(new[start:]), cache)
        self.ids, self.logits = new, logits[0].numpy()
        return self.logits

    sync = run


def private_cache_dir() -> Path:
    """$XDG_CACHE_HOME/vqinc (default ~/.cache/vqinc), made with mode 0700 and checked before it is
    trusted: a real directory (not a link), owned by this user, writable by nobody else. (A predictable
    path under the shared temp dir could be made in advance by another user, holding their graphs.)"""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = base / "vqinc"
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        root.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeError(f"decoder cache {root} is not a directory (a link or a file): remove it")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise RuntimeError(f"decoder cache {root} belongs to uid {st.st_uid}, not to you ({os.getuid()}): remove it")
    if st.st_mode & 0o077:
        raise RuntimeError(f"decoder cache {root} has mode {stat.S_IMODE(st.st_mode):o}; it must be private "
                           f"(chmod 700 {root})")
    return root


def decoder_for(model: Model, attention: str | None = None, log=print) -> tuple[KVDecoder, str]:
    """The model's KVDecoder. When its directory has no decoder.onnx, or one of another attention kind than
    `attention` (None: whatever is there, else the exporter's default), export one (needs torch) into a copy
    of the directory in this user's private cache (`private_cache_dir`), keyed by fingerprint and kind, and
    load it from there."""
    have = model.manifest.provenance.decoder_attention if model.manifest.decoder_graph else None
    if have is not None and attention in (None, have):
        return KVDecoder(model), str(model.root)
    cache = private_cache_dir() / f"decoder-{model.manifest.fingerprint}-{attention or 'auto'}"
    try:
        other = Model.load(cache, providers=model.executor.providers)
        if other.manifest.decoder_graph is None or other.manifest.fingerprint != model.manifest.fingerprint:
            raise ValueError("stale")
    except ValueError:
        from vqinc.export.decoder import add_decoder
        from vqinc.export.from_dir import model_from_dir

        log(f"{model.root} has no decoder.onnx{f' with {attention} attention' if attention else ''}: exporting one "
            f"into {cache} (to keep one in the model directory: vqinc export {model.root} {model.root} --decoder)")
        with replacing_dir(cache) as stage:  # a run interrupted here leaves no half-made cache entry
            shutil.copytree(model.root, stage, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "__init__.py"))
            add_decoder(model_from_dir(stage)[0], stage, attention)
        other = Model.load(cache, providers=model.executor.providers)
    return KVDecoder(other), str(cache)
