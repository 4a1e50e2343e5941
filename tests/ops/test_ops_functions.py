"""The onnxscript bodies, run by stock ONNX Runtime as model-local functions, against the numpy reference."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from ops_cases import CI, decode_inputs, vq_inputs

from vqinc.ops import reference
from vqinc.ops.domain import DOMAIN, IR_VERSION, ONNX_OPSET, OP_NAMES, VQINC_OPSET
from vqinc.ops.functions import SIGNATURES, function_protos, make_op_model

# op -> (strategy of inputs, reference with the same inputs, tolerance per output)
OP_TABLE: dict[str, tuple[st.SearchStrategy, Callable[..., tuple], list[dict | None]]] = {
    "VQEncode": (
        vq_inputs(),
        lambda x, codebook: (reference.vq_encode(x, codebook),),
        [None],
    ),
    "VQDecode": (
        decode_inputs(),
        lambda codes, codebook: (reference.vq_decode(codes, codebook),),
        [None],  # a gather: bit-exact
    ),
}
assert tuple(OP_TABLE) == OP_NAMES


def _assert_outputs(op_name: str, got: list[np.ndarray], want: tuple, tols: list[dict | None]) -> None:
    outputs = SIGNATURES[op_name][1]
    assert len(got) == len(want) == len(outputs)
    for (name, dtype, dims), g, w, tol in zip(outputs, got, want, tols, strict=True):
        assert g.dtype == onnx.helper.tensor_dtype_to_np_dtype(dtype), name
        assert g.shape == w.shape and len(dims) == g.ndim, name
        assert not np.isnan(g).any(), name
        if tol is None:
            np.testing.assert_array_equal(g, w, err_msg=f"{op_name}.{name}")
        else:
            np.testing.assert_allclose(g, w, **tol, err_msg=f"{op_name}.{name}")


@pytest.mark.parametrize("op_name", OP_NAMES)
def test_op_model_passes_full_check(op_name: str) -> None:
    model = make_op_model(op_name)
    onnx.checker.check_model(model, full_check=True)
    assert [(n.domain, n.op_type) for n in model.graph.node] == [(DOMAIN, op_name)]
    assert {(o.domain, o.version) for o in model.opset_import} == {("", ONNX_OPSET), (DOMAIN, VQINC_OPSET)}
    assert [(f.domain, f.name) for f in model.functions] == [(DOMAIN, op_name)]
    assert model.ir_version == IR_VERSION
    inputs, outputs = SIGNATURES[op_name]
    assert [i.name for i in model.graph.input] == [name for name, _, _ in inputs]
    assert [o.name for o in model.graph.output] == [name for name, _, _ in outputs]
    for value in [*model.graph.input, *model.graph.output]:  # every dim symbolic: one model for all sizes
        assert all(d.dim_param and not d.HasField("dim_value") for d in value.type.tensor_type.shape.dim)


def test_function_protos() -> None:
    protos = function_protos()
    assert [(p.domain, p.name) for p in protos] == [(DOMAIN, name) for name in OP_NAMES]
    for proto in protos:
        assert [(o.domain, o.version) for o in proto.opset_import] == [("", ONNX_OPSET)]
        assert all(node.domain in ("", "ai.onnx") for node in proto.node), "bodies use standard ops only"
        assert "Loop" not in {node.op_type for node in proto.node}
    assert not [a for p in protos for a in p.attribute], "no op takes attributes"
    protos[0].name = "changed"
    assert function_protos()[0].name == "VQEncode", "callers get fresh copies"


def test_make_op_model_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown vqinc op 'VQFoo'"):
        make_op_model("VQFoo")
    with pytest.raises(TypeError, match="scale"):
        make_op_model("VQEncode", scale=1.0)  # no op takes attributes


@pytest.mark.parametrize("op_name", OP_NAMES)
@CI
@given(data=st.data())
def test_ort_matches_reference(run_op, op_name: str, data: st.DataObject) -> None:
    strategy, ref, tols = OP_TABLE[op_name]
    inputs = data.draw(strategy)
    got = run_op(op_name, inputs)
    _assert_outputs(op_name, got, ref(**inputs), tols)


@pytest.mark.parametrize("op_name", OP_NAMES)
@CI
@given(data=st.data())
def test_ort_optimized_matches_reference(run_op, op_name: str, data: st.DataObject) -> None:
    """ORT's default fusions (what the runtime uses) keep the semantics."""
    strategy, ref, tols = OP_TABLE[op_name]
    inputs = data.draw(strategy)
    got = run_op(op_name, inputs, optimize=True)
    _assert_outputs(op_name, got, ref(**inputs), tols)


def test_ort_ties_go_to_first_index(run_op) -> None:
    # Small integers: every float32 product and sum is exact, so the ties are exact in any order.
    codebook = np.array([[[1, 0], [0, 1], [1, 0], [0, 1]], [[3, 3], [3, 3], [0, 0], [0, 0]]], np.float32)
    x = np.array([[[1, 1], [1, 1]], [[0, 1], [3, 3]], [[2, 0], [0, 0]]], np.float32)  # (3, 2, 2)
    codes = run_op("VQEncode", {"x": x, "codebook": codebook})[0]
    np.testing.assert_array_equal(codes, [[0, 2], [1, 0], [0, 2]])
    np.testing.assert_array_equal(codes, reference.vq_encode(x, codebook))


@CI
@given(vq_inputs())
def test_ort_decode_of_encode_is_reference_quantize(run_op, case: dict[str, np.ndarray]) -> None:
    codes = run_op("VQEncode", case)[0]
    decoded = run_op("VQDecode", {"codes": codes, "codebook": case["codebook"]})[0]
    np.testing.assert_array_equal(decoded, reference.vq_decode(reference.vq_encode(**case), case["codebook"]))
