"""`vqinc export --verify`: the exported graphs against PyTorch on sample texts.

Checks (a) every graph passes `onnx.checker.check_model(full_check=True)`, (b) the stage chain
run by the runtime in full-recompute mode and (c) the monolithic graph give the same codes as
PyTorch and logits within 1e-4.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from tokenizers import Tokenizer

from vqinc.model.checkpoint import load_checkpoint
from vqinc.model.transformer import VQTransformer
from vqinc.runtime.format.manifest import graph_files, load_manifest
from vqinc.runtime.model_dir import Model

LOGIT_TOL = 1e-4
SAMPLE_TEXTS = (
    "a",
    "An utterly charming film, though its second half drags.",
    "The proposal adds a new keyword to the grammar; existing code keeps working unchanged.\n\n"
    "Backwards compatibility: none broken. Rejected ideas are listed below.",
)


@dataclass
class Row:
    text: str
    num_tokens: int
    stage_logit_diff: float
    stage_code_mismatches: int
    full_logit_diff: float | None
    full_code_mismatches: int | None


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    checker_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.checker_errors and all(
            r.stage_logit_diff <= LOGIT_TOL and r.stage_code_mismatches == 0
            and (r.full_logit_diff is None or (r.full_logit_diff <= LOGIT_TOL and r.full_code_mismatches == 0))
            for r in self.rows)

    def table(self) -> str:
        out = ["| text | tokens | stages max|dlogit| | stage code diffs | full max|dlogit| | full code diffs |",
               "|---|---|---|---|---|---|"]
        for r in self.rows:
            fl = "-" if r.full_logit_diff is None else f"{r.full_logit_diff:.2e}"
            fc = "-" if r.full_code_mismatches is None else str(r.full_code_mismatches)
            out.append(f"| {r.text[:24]!r} | {r.num_tokens} | {r.stage_logit_diff:.2e} | "
                       f"{r.stage_code_mismatches} | {fl} | {fc} |")
        checker = "all graphs pass" if not self.checker_errors else "; ".join(self.checker_errors)
        out.append(f"onnx.checker (full_check): {checker}")
        out.append("VERIFY " + ("OK" if self.ok else "FAILED"))
        return "\n".join(out)


@torch.no_grad()
def verify(source: str | Path | tuple[VQTransformer, Tokenizer], model_dir: str | Path,
           texts: tuple[str, ...] = SAMPLE_TEXTS, check_graphs: bool = True) -> Report:
    model, tok = (load_checkpoint(source)[:2] if isinstance(source, (str, Path)) else source)
    model = model.eval()
    root = Path(model_dir)
    report = Report()
    if check_graphs:
        for rel in graph_files(load_manifest(root)):
            try:
                onnx.checker.check_model(onnx.load(str(root / rel)), full_check=True)
            except Exception as e:  # checker raises ValidationError / InferenceError
                report.checker_errors.append(f"{rel}: {str(e).splitlines()[0]}")
    rt = Model.load(root, threads=1)
    has_full = rt.manifest.full_graph is not None
    for text in texts:
        ids = rt.encode_ids(text)
        out = model(torch.from_numpy(ids)[None])
        t_logits = out.logits[0].numpy()
        t_codes = torch.stack(out.codes)[:, 0].numpy()
        doc = rt.document(text)
        fl = fc = None
        if has_full:
            f_logits, f_codes = rt.run_full(ids)
            fl, fc = float(np.abs(f_logits[0] - t_logits).max()), int((f_codes != t_codes).sum())
        report.rows.append(Row(text, len(ids), float(np.abs(doc.logits - t_logits).max()),
                               int((doc.codes != t_codes).sum()), fl, fc))
    return report


@dataclass
class DecoderRow:
    text: str
    case: str
    """"split" (a prefix, then the rest of the text) or "edit" (a token substituted mid-document)."""
    num_tokens: int
    start: int
    """First position the decoder ran (0: from scratch; else the prefix 0..start-1 came from its cache)."""
    logit_diff: float
    code_mismatches: int


@dataclass
class DecoderReport:
    attention: str
    rows: list[DecoderRow] = field(default_factory=list)

    @property
    def max_logit_diff(self) -> float:
        return max((r.logit_diff for r in self.rows), default=0.0)

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.logit_diff <= LOGIT_TOL and r.code_mismatches == 0 for r in self.rows)

    def table(self) -> str:
        out = [f"decoder.onnx ({self.attention} attention) vs full.onnx; the suffix from `start` ran against the "
               "cached prefix:",
               "| text | case | tokens | start | max|dlogit| | code diffs |", "|---|---|---|---|---|---|"]
        out += [f"| {r.text[:24]!r} | {r.case} | {r.num_tokens} | {r.start} | {r.logit_diff:.2e} | "
                f"{r.code_mismatches} |" for r in self.rows]
        out.append("VERIFY DECODER " + ("OK" if self.ok else "FAILED"))
        return "\n".join(out)


def decoder_splits(n: int) -> list[int]:
    """Prefix lengths to test on a document of n positions (BOS included): scratch, 1, a third, half, n-1."""
    return sorted({0, *(p for p in (1, n // 3, n // 2, n - 1) if 1 <= p < n)})


def verify_decoder(model_dir: str | Path, texts: tuple[str, ...] = SAMPLE_TEXTS) -> DecoderReport:
    """decoder.onnx against full.onnx: logits within 1e-4 and identical codes for the suffix it runs, on
    several prefix/suffix splits of each text and on a mid-document substitution (runtime only, no torch)."""
    from vqinc.runtime.baseline.prefix_kv import KVDecoder

    rt = Model.load(model_dir, threads=1)
    dec = KVDecoder(rt)
    report = DecoderReport(rt.manifest.provenance.decoder_attention or "?")
    for text in texts:
        ids = rt.encode_ids(text)
        f_logits, f_codes = rt.run_full(ids)
        for p in decoder_splits(len(ids)):
            if p == 0:
                doc = dec.document(ids[1:])
            else:
                doc = dec.document(ids[1:p])  # a cached prefix of p positions (BOS included) ...
                doc.set_ids(ids[1:])  # ... then the rest of the text
            start = len(ids) - doc.suffix_codes.shape[1]
            assert start == p, (start, p)
            report.rows.append(DecoderRow(text, "split", len(ids), start, float(np.abs(doc.logits - f_logits[0]).max()),
                                          int((doc.suffix_codes != f_codes[:, start:]).sum())))
        if len(ids) > 4:  # a substitution in the middle: the cache is cut there, the rest re-runs
            doc = dec.document(ids[1:])
            edited = ids.copy()
            mid = len(ids) // 2
            edited[mid] = (edited[mid] + 1) % rt.vocab_size
            st = doc.set_ids(edited[1:])
            e_logits, e_codes = rt.run_full(edited)
            report.rows.append(DecoderRow(text, "edit", len(ids), st.start,
                                          float(np.abs(doc.logits - e_logits[0]).max()),
                                          int((doc.suffix_codes != e_codes[:, st.start:]).sum())))
    return report
