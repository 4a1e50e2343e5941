"""The standard past-KV decoder of a model directory (`decoder.onnx`), driven as serving stacks drive one.

This is what a user who does not adopt vqinc runs after an edit: keep the keys and values of every
position (optimum's `past_key_values.%d.key/value`); when the text changes, cut the cache at the first
changed token and run only the suffix (onnxruntime-genai's `rewind_to` + `append_tokens`). It is the
`prefix_kv` contender of `benchmarks/edits.py` and needs only onnxruntime and numpy (never torch).

`KVDecoder` is read-only and shared (genai's Model); `KVDocument` holds one document's cache (genai's
Generator). The graph's contract is in `export/decoder.py`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from vqinc.runtime.format.manifest import GraphSpec, ModelDirError
from vqinc.runtime.model_dir import Model
from vqinc.runtime.ort.sessions import BULK_ROWS, session_options
from vqinc.runtime.text.splice import first_difference


def expand_names(names: tuple[str, ...], num_layers: int) -> list[str]:
    """Graph I/O names of a spec: plain names first, then the `%d` templates per layer (key, value, ...)."""
    plain = [n for n in names if "%d" not in n]
    per_layer = [n for n in names if "%d" in n]
    return plain + [t % i for i in range(num_layers) for t in per_layer]


def io_names(spec: GraphSpec, num_layers: int) -> tuple[list[str], list[str]]:
    return expand_names(spec.inputs, num_layers), expand_names(spec.outputs, num_layers)


@dataclass
class KVStats:
    """What one `set_ids` ran: the suffix from `start` (positions, BOS = 0) of `num_run` tokens."""

    start: int
    num_run: int
    num_tokens: int
    wall_ms: float


class KVDecoder:
    """The session of `decoder.onnx` (same providers as the model's other sessions)."""

    def __init__(self, model: Model):
        spec = model.manifest.decoder_graph
        if spec is None:
            raise ModelDirError(f"{model.root}: no decoder graph; add one with "
                                f"`vqinc export {model.root} {model.root} --decoder` (needs the export extra)")
        self.model, self.spec = model, spec
        self.session = self._open(1)
        self._bulk: ort.InferenceSession | None = None
        self.inputs, self.outputs = io_names(spec, model.num_layers)
        got_in = [i.name for i in self.session.get_inputs()]
        got_out = [o.name for o in self.session.get_outputs()]
        if got_in != self.inputs or got_out != self.outputs:
            raise ModelDirError(f"{model.root}: {spec.file} has inputs {got_in} / outputs {got_out}, the manifest "
                                f"says {self.inputs} / {self.outputs}")
        self.past_names = self.inputs[2:]
        self.cache_shape = (1, model.num_kv_heads, 0, model.head_dim)

    def _open(self, threads: int) -> ort.InferenceSession:
        try:
            return ort.InferenceSession(str(self.spec.path(self.model.root)), sess_options=session_options(threads),
                                        providers=self.model.executor.providers)
        except Exception as e:
            raise ModelDirError(f"{self.model.root}: {self.spec.file} cannot be loaded by ONNX Runtime: "
                                f"{str(e).splitlines()[0][:300]}") from e

    def session_for(self, rows: int) -> ort.InferenceSession:
        """The engine's policy (sessions.py): one thread below `BULK_ROWS` rows, the model's `threads` above."""
        threads = self.model.executor.threads
        if rows < BULK_ROWS or threads == 1:
            return self.session
        if self._bulk is None:
            self._bulk = self._open(threads)
        return self._bulk

    def document(self, ids: npt.ArrayLike = ()) -> KVDocument:
        """A document of token ids (BOS excluded, as `Document.token_ids`)."""
        return KVDocument(self, ids)


class KVDocument:
    """One document's past K/V, running hidden sums and logits."""

    def __init__(self, decoder: KVDecoder, ids: npt.ArrayLike = ()):
        self.decoder = decoder
        self.bos = decoder.model.bos_token_id
        empty = np.zeros(decoder.cache_shape, np.float32)
        self.ids = np.zeros(0, np.int64)  # BOS included
        self.past = [empty] * len(decoder.past_names)  # (1, Hkv, P, dh) each
        self.sums = np.zeros((0, decoder.model.d_model), np.float32)  # (P, d)
        self.logits = np.zeros(len(decoder.model.labels), np.float32)
        self.suffix_codes = np.zeros((decoder.model.num_layers, 0, decoder.model.num_heads), np.int64)
        """Codes (L, S, H) of the positions the last run computed (the last S positions)."""
        self.append_tokens(self._with_bos(ids))

    def _with_bos(self, ids: npt.ArrayLike) -> npt.NDArray[np.int64]:
        return np.concatenate([np.asarray([self.bos], np.int64), np.asarray(ids, np.int64).reshape(-1)])

    @property
    def length(self) -> int:
        return len(self.ids)

    def rewind_to(self, n: int) -> None:
        """Keep the first n positions (views: the next run copies them into its present outputs)."""
        if not 0 <= n <= self.length:
            raise ValueError(f"rewind_to({n}) outside [0, {self.length}]")
        self.ids, self.sums = self.ids[:n], self.sums[:n]
        self.past = [p[:, :, :n] for p in self.past]

    def append_tokens(self, ids: npt.NDArray[np.int64]) -> None:
        """Run `ids` after the current positions (at least one token: no graph runs on zero rows)."""
        ids = np.asarray(ids, np.int64)
        if ids.ndim != 1 or len(ids) == 0:
            raise ValueError(f"append_tokens needs a 1-D array of at least one token id, got shape {ids.shape}")
        d = self.decoder
        hs = self.sums[-1:] if self.length else np.zeros((1, self.sums.shape[1]), np.float32)
        feeds = {"input_ids": ids[None], "past_hidden_sum": hs, **dict(zip(d.past_names, self.past, strict=True))}
        logits, sums, codes, *present = d.session_for(len(ids)).run(None, feeds)
        self.ids = np.concatenate([self.ids, ids])
        self.sums = np.concatenate([self.sums, sums])
        self.suffix_codes = codes
        self.past = present
        self.logits = logits[0]

    def set_ids(self, ids: npt.ArrayLike) -> KVStats:
        """Make the document hold `ids` (BOS excluded): rewind to the first changed token, run the rest."""
        t0 = time.perf_counter()
        new = self._with_bos(ids)
        p = first_difference(new, self.ids)
        if p == len(new) == self.length:  # unchanged
            return KVStats(p, 0, len(new), (time.perf_counter() - t0) * 1e3)
        start = min(p, len(new) - 1)  # a pure deletion at the end re-runs the last token (pooling "last")
        self.rewind_to(start)
        self.append_tokens(new[start:])
        return KVStats(start, len(new) - start, len(new), (time.perf_counter() - t0) * 1e3)
