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
from vqinc.runtime.manifest import graph_files, load_manifest
from vqinc.runtime.model import Model

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
