"""`Model`: a loaded model directory (read-only, shared by any number of documents)."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import Tokenizer

from vqinc.runtime.engine.labels import fresh_labels
from vqinc.runtime.engine.propagate import EditStats, Engine
from vqinc.runtime.format.manifest import Manifest, ModelDirError, load_manifest
from vqinc.runtime.format.spec import ModelSpec
from vqinc.runtime.ort.executor import Executor

if TYPE_CHECKING:
    from vqinc.runtime.chunked import ChunkedDocument
    from vqinc.runtime.document import Document
    from vqinc.runtime.text.chunking import ChunkConfig

WARMUP_TEXT = ("A short text that every stage graph sees once at load, so that a user's first edit does "
               "not pay for ONNX Runtime's first-run allocations. ") * 4


def softmax(logits: np.ndarray) -> np.ndarray:
    """Label probabilities of `logits`, in float64."""
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def default_model_dir() -> Path:
    """The model bundled with the package (see the README for how it was trained)."""
    return Path(str(resources.files("vqinc.runtime") / "default_model"))


class Model:
    """Executor + tokenizer + manifest of one exported VQ model."""

    def __init__(self, root: Path, manifest: Manifest, executor: Executor, tokenizer: Tokenizer,
                 codebooks: np.ndarray):
        self.root, self.manifest, self.executor, self.tokenizer = root, manifest, executor, tokenizer
        self.spec: ModelSpec = executor.spec
        self.engine = Engine(executor, self.spec, list(codebooks))

    @classmethod
    def load(cls, model_dir: str | Path | None = None, providers: list[str] | None = None,
             threads: int | None = None, warm_up: bool = True) -> Model:
        """Load and validate a model directory (default: the bundled model)."""
        root = Path(model_dir) if model_dir is not None else default_model_dir()
        manifest = load_manifest(root)
        spec = manifest.spec
        try:
            tokenizer = Tokenizer.from_file(str(root / manifest.tokenizer))
        except Exception as e:
            raise ModelDirError(f"{root}: {manifest.tokenizer} is not a valid tokenizers file ({e})") from None
        if tokenizer.get_vocab_size() > spec.vocab_size:
            raise ModelDirError(f"{root}: {manifest.tokenizer} has {tokenizer.get_vocab_size()} tokens, more "
                                f"than the model's vocabulary {spec.vocab_size}")
        executor = Executor(root, manifest, spec, providers, threads)  # checks every graph's shapes against spec
        codebooks = _load_codebooks(root / manifest.codebooks, spec)
        model = cls(root, manifest, executor, tokenizer, codebooks)
        if warm_up:
            model.warm_up()
        return model

    def warm_up(self) -> None:
        """Run every stage once on a short document and an edit of it."""
        ids = self.tokenizer.encode(WARMUP_TEXT, add_special_tokens=False).ids[: self.max_positions // 2]
        doc = self.document_ids(ids)
        doc.edit_tokens(len(ids) // 2, 1, ids[:2])

    # -- sizes (a view of `spec`) --------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.spec.num_layers

    @property
    def d_model(self) -> int:
        return self.spec.d_model

    @property
    def num_heads(self) -> int:
        return self.spec.num_heads

    @property
    def num_kv_heads(self) -> int:
        return self.spec.num_kv_heads

    @property
    def head_dim(self) -> int:
        return self.spec.head_dim

    @property
    def vocab_size(self) -> int:
        return self.spec.vocab_size

    @property
    def labels(self) -> tuple[str, ...]:
        return self.spec.labels

    def label_of(self, logits: np.ndarray) -> str:
        """The label a document with these logits gets (documents and chunked documents alike)."""
        return self.labels[int(np.argmax(logits))]

    @property
    def max_positions(self) -> int:
        return self.spec.max_positions

    @property
    def max_tokens(self) -> int:
        """Longest text one document holds, in tokens (the window minus BOS)."""
        return self.spec.max_positions - 1

    @property
    def bos_token_id(self) -> int:
        return self.spec.bos_token_id

    @property
    def providers(self) -> list[str]:
        """Execution providers the sessions run on (what ORT reports, in priority order)."""
        return self.executor.providers_in_use()

    # -- documents ---------------------------------------------------------------------------
    def document(self, text: str = "", chunked: bool | None = None, chunking: ChunkConfig | None = None,
                 positions: Sequence[int] | None = None) -> Document | ChunkedDocument:
        """A new incremental document holding `text`. `chunked`: None (default) gives a plain `Document` when
        the text fits the model's window and a `ChunkedDocument` (any length) when it does not; True always
        a `ChunkedDocument` (for a document that may grow past the window: editors, replays); False always a
        plain `Document` (a longer text is refused). `chunking`: where a ChunkedDocument cuts its text.
        `positions`: the position label of each token (a plain `Document` of a model with RoPE position
        labels): a fresh build equal to an edited document with these labels (`doc.positions`)."""
        from vqinc.runtime.chunked import ChunkedDocument
        from vqinc.runtime.document import Document, check_text
        from vqinc.runtime.text.chunking import ChunkConfig

        if chunked not in (None, True, False):
            raise TypeError(f"chunked must be None, True or False, got {chunked!r}")
        if chunked is None and isinstance(text, str) and len(text) > (chunking or ChunkConfig).max_doc_chars:
            chunked = True  # refused by ChunkedDocument at once, without tokenising the whole text first
        if chunked is None:
            check_text(text)
            fits = len(self.tokenizer.encode(text, add_special_tokens=False).ids) + 1 <= self.max_positions
            chunked = not fits
        if positions is not None:
            if chunked:
                raise ValueError("positions= builds a plain Document (chunked=False): a ChunkedDocument labels "
                                 "each chunk itself")
            return Document(self, text, positions=positions)
        return ChunkedDocument(self, text, chunking) if chunked else Document(self, text)

    def document_ids(self, ids: Sequence[int], positions: Sequence[int] | None = None) -> Document:
        """A document built from token ids (BOS excluded) rather than text (`positions`: see `document`)."""
        from vqinc.runtime.document import Document, check_ids

        return Document(self, "", _ids=check_ids(ids, self.vocab_size), positions=positions)

    def edit_many(self, edits: Sequence[tuple[Document | ChunkedDocument, int, int, str]]) -> list[EditStats]:
        """Apply character edits `(document, start, end, text)` to several documents, sharing the
        row-wise graph calls between them. Each result equals editing that document alone; a document
        may appear more than once (its edits apply in order). All edits are validated first: an invalid
        one raises and no document changes."""
        from vqinc.runtime.chunked import ChunkedDocument, edit_many

        if isinstance(edits, Sequence) and any(isinstance(e, (tuple, list)) and e and isinstance(e[0], ChunkedDocument)
                                               for e in edits):
            return edit_many(self, edits)
        from vqinc.runtime.document import edit_many as edit_plain

        return edit_plain(self, edits)

    def classify(self, text: str) -> tuple[str, np.ndarray]:
        """One-shot: (label, probabilities)."""
        doc = self.document(text)
        return doc.label, doc.probs

    def full_logits(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """The monolithic graph on `text`: (logits (C,), codes (L, n, H)); the baseline contender."""
        logits, codes = self.run_full(self.encode_ids(text))
        return logits[0], codes

    def run_full(self, ids: np.ndarray, positions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """full.onnx on token ids (BOS first) at position labels `positions` (BOS first; default: a fresh
        document's): (logits (1, C), codes (L, n, H))."""
        ids = np.asarray(ids, np.int64)
        if positions is None:
            positions = fresh_labels(len(ids), self.spec.position_scale)
        logits, codes = self.executor.run("full", ids=ids, positions=np.asarray(positions, np.int64))
        return logits, codes

    def encode_ids(self, text: str) -> np.ndarray:
        """Token ids with BOS first, as every graph expects."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return np.asarray([self.bos_token_id, *ids], np.int64)


def _load_codebooks(path: Path, spec: ModelSpec) -> np.ndarray:
    want = (spec.num_layers, spec.num_heads, spec.num_codes, spec.head_dim)
    try:
        with open(path, "rb") as f:  # the header first: an array is read only once its shape is the one wanted
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"format version {version}; 1.0 or 2.0 expected")
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(f)
            f.seek(0)
            cb = np.load(f, allow_pickle=False) if shape == want and dtype == np.float32 else None
    except (OSError, ValueError, EOFError) as e:
        raise ModelDirError(f"{path.parent}: {path.name} is not a readable .npy array ({e})") from None
    if cb is None or not np.isfinite(cb).all():
        got = f"{dtype} {shape}" if cb is None else "values that are not finite"
        raise ModelDirError(f"{path.parent}: {path.name} holds {got}; the model needs finite float32 {want} "
                            "(layers, heads, codes, head width)")
    return cb
