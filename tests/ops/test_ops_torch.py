"""torch.ops.vqinc: eager kernels against the reference, and export to one custom node that ORT runs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given
from ops_cases import CI, F32_TOL, decode_inputs, vq_inputs

from vqinc.ops import reference
from vqinc.ops.domain import DOMAIN, ONNX_OPSET, VQINC_OPSET
from vqinc.ops.torch_ops import attach_functions, custom_translation_table


@CI
@given(vq_inputs())
def test_eager_encode_matches_reference(case: dict[str, np.ndarray]) -> None:
    x, codebook = torch.from_numpy(case["x"]), torch.from_numpy(case["codebook"])
    codes = torch.ops.vqinc.vq_encode(x, codebook)
    assert codes.dtype == torch.int64
    np.testing.assert_array_equal(codes.numpy(), reference.vq_encode(**case))


@CI
@given(decode_inputs())
def test_eager_decode_matches_reference(case: dict[str, np.ndarray]) -> None:
    decoded = torch.ops.vqinc.vq_decode(torch.from_numpy(case["codes"]), torch.from_numpy(case["codebook"]))
    np.testing.assert_array_equal(decoded.numpy(), reference.vq_decode(**case))


def test_decode_gradient_reaches_codebook() -> None:
    codebook = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    codes = torch.tensor([[0, 3], [0, 1], [2, 3]])
    torch.autograd.gradcheck(lambda cb: torch.ops.vqinc.vq_decode(codes, cb), (codebook,))


def test_eager_ties_go_to_first_index() -> None:
    codebook = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    x = torch.tensor([[[1.0, 1.0]], [[0.0, 1.0]], [[2.0, 0.0]], [[0.0, 0.0]]])
    assert torch.ops.vqinc.vq_encode(x, codebook).flatten().tolist() == [0, 1, 0, 0]


@pytest.mark.parametrize("op_name", ["vq_encode", "vq_decode"])
def test_opcheck(op_name: str) -> None:
    """Fake kernels agree with the eager ones in shape/dtype; schema and registration are sound."""
    x, codebook = torch.randn(5, 3, 4), torch.randn(3, 6, 4)
    if op_name == "vq_decode":
        args = (torch.randint(0, 6, (5, 3)), codebook.requires_grad_())  # exercises the backward too
    else:
        args = (x, codebook)
    torch.library.opcheck(getattr(torch.ops.vqinc, op_name).default, args)


class _TinyVQ(torch.nn.Module):
    """x (n, d) -> proj -> (n, h, dh) -> encode -> decode -> out-proj."""

    def __init__(self, d: int = 12, num_heads: int = 3, num_codes: int = 5) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.proj = torch.nn.Linear(d, d)
        self.codebook = torch.nn.Parameter(torch.randn(num_heads, num_codes, d // num_heads))
        self.out = torch.nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        heads = self.proj(x).view(x.shape[0], self.num_heads, -1)  # (n, h, dh)
        codes = torch.ops.vqinc.vq_encode(heads, self.codebook)
        y = self.out(torch.ops.vqinc.vq_decode(codes, self.codebook).reshape(x.shape))
        return codes, y


@pytest.fixture(scope="module")
def exported() -> tuple[_TinyVQ, onnx.ModelProto]:
    torch.manual_seed(0)
    module = _TinyVQ().eval()
    program = torch.onnx.export(
        module,
        (torch.randn(4, 12),),
        dynamo=True,
        opset_version=ONNX_OPSET,
        input_names=["x"],
        dynamic_shapes=({0: torch.export.Dim("n")},),
        custom_translation_table=custom_translation_table(),
    )
    return module, attach_functions(program.model_proto)


def test_export_emits_one_node_per_op(exported) -> None:
    _, model = exported
    onnx.checker.check_model(model, full_check=True)
    custom = [node.op_type for node in model.graph.node if node.domain == DOMAIN]
    assert sorted(custom) == ["VQDecode", "VQEncode"]
    assert sorted(f.name for f in model.functions) == ["VQDecode", "VQEncode"]
    assert {(o.domain, o.version) for o in model.opset_import} >= {("", ONNX_OPSET), (DOMAIN, VQINC_OPSET)}
    # The bodies were not inlined into the graph: no ArgMin (encode) or Gather (decode) outside the functions.
    assert not {"ArgMin", "Gather"} & {node.op_type for node in model.graph.node}


@pytest.mark.parametrize("n", [1, 7])
def test_export_runs_in_ort_like_torch(exported, n: int) -> None:
    module, model = exported
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = torch.randn(n, 12, generator=torch.Generator().manual_seed(n))
    codes, y = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want_codes, want_y = module(x)
    np.testing.assert_array_equal(codes, want_codes.numpy())
    np.testing.assert_allclose(y, want_y.numpy(), **F32_TOL)


def test_attach_functions_is_idempotent_and_checks_opset(exported) -> None:
    _, model = exported
    again = onnx.ModelProto()
    again.CopyFrom(model)
    attach_functions(again)
    assert len(again.functions) == len(model.functions)
    assert len(again.opset_import) == len(model.opset_import)
    for entry in again.opset_import:
        if entry.domain == "":
            entry.version = 20
    with pytest.raises(ValueError, match="opset_version=18"):
        attach_functions(again)
