"""The PyTorch model of an exported model directory, rebuilt from the weights inside its `full.onnx`.

The bundled model ships without its training checkpoint; the torch contenders of the benchmarks and
`vqinc export MODEL_DIR MODEL_DIR --decoder` need the torch module. `full.onnx` holds every parameter
under its state-dict name (dynamo export keeps them), so the module can be rebuilt exactly. The result
is checked against `full.onnx` itself (codes identical, logits within 1e-4) before it is returned.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from tokenizers import Tokenizer

from vqinc.model.config import ModelConfig
from vqinc.model.transformer import VQTransformer
from vqinc.runtime.format.manifest import ModelDirError, load_manifest

CHECK_TEXT = "The proposal adds a keyword to the grammar; existing code keeps working. An utterly charming film."


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / "manifest.json").is_file()


@torch.no_grad()
def model_from_dir(model_dir: str | Path, check: bool = True) -> tuple[VQTransformer, Tokenizer]:
    """(torch model, tokenizer) of an exported model directory; raises ModelDirError if it cannot be rebuilt."""
    root = Path(model_dir)
    man = load_manifest(root)
    if man.full_graph is None:
        raise ModelDirError(f"{root}: no full.onnx to read the weights from (exported with --no-full)")
    cfg = ModelConfig.from_dict(man.model)
    model = VQTransformer(cfg).eval()
    proto = onnx.load(str(root / man.full_graph.file))  # external data, if any, is read from beside the file
    state = model.state_dict()
    # parameters and codebooks are what inference reads; EMA statistics are training-only
    needed = [n for n, _ in model.named_parameters()] + [n for n in state if n.endswith("codebook")]
    weights = _initializers_by_param(proto, needed)
    missing = [n for n in needed if n not in weights]
    if missing:
        raise ModelDirError(f"{root}: {man.full_graph.file} lacks weights {missing[:5]} (of {len(missing)})")
    for name in needed:
        if tuple(weights[name].shape) != tuple(state[name].shape):
            raise ModelDirError(f"{root}: weight {name} has shape {weights[name].shape}, the config says "
                                f"{tuple(state[name].shape)}")
        state[name] = torch.from_numpy(np.array(weights[name]))
    model.load_state_dict(state)
    tok = Tokenizer.from_file(str(root / man.tokenizer))
    if check:
        _check_against_full(model, tok, root, man)
    return model, tok


def _initializers_by_param(proto: onnx.ModelProto, names: list[str]) -> dict:
    """Parameter name -> array. Initializers keep their state-dict names ("m." + name), except that the
    exporter's optimizer merges identical tensors (e.g. norm weights still at 1.0) into one initializer;
    those parameters are found through the node that reads them (its recorded torch call names them)."""
    inits = {t.name: t for t in proto.graph.initializer}
    found = {n: numpy_helper.to_array(inits["m." + n]) for n in names if "m." + n in inits}
    mangled = {("m." + n).replace(".", "_"): n for n in names if n not in found}
    for node in proto.graph.node if mangled else ():
        fx = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.fx_node"), "")
        params = re.findall(r"%p_(\w+)", fx)
        used = [i for i in node.input if i in inits]
        if len(params) == len(used):
            for p, i in zip(params, used, strict=True):
                if p in mangled:
                    found[mangled.pop(p)] = numpy_helper.to_array(inits[i])
    return found


def _check_against_full(model: VQTransformer, tok: Tokenizer, root: Path, man) -> None:
    import onnxruntime as ort

    from vqinc.runtime.engine.labels import fresh_labels
    from vqinc.runtime.ort.sessions import check_threads, session_options

    ids = np.asarray([man.spec.bos_token_id, *tok.encode(CHECK_TEXT, add_special_tokens=False).ids], np.int64)
    sess = ort.InferenceSession(str(root / man.full_graph.file), sess_options=session_options(check_threads(None)),
                                providers=["CPUExecutionProvider"])
    feeds = {"ids": ids, "positions": fresh_labels(len(ids), man.spec.position_scale)}
    names = {i.name for i in sess.get_inputs()}  # full.onnx takes positions since position labels
    logits, codes = sess.run(None, {k: v for k, v in feeds.items() if k in names})
    out = model(torch.from_numpy(ids)[None])
    diff = float(np.abs(out.logits[0].numpy() - logits[0]).max())
    flips = int((torch.stack(out.codes)[:, 0].numpy() != codes).sum())
    if diff > 1e-4 or flips:
        raise ModelDirError(f"{root}: the model rebuilt from {man.full_graph.file} disagrees with it "
                            f"(max |dlogit| {diff:.1e}, {flips} code flips)")
