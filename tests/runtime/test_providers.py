"""Execution providers (issue 10, item 9): `providers=` is checked before any session exists, a provider
that cannot run is an error or one clear warning, and `model.providers` / `vqinc info` say what runs."""

from __future__ import annotations

import os
import warnings

import onnxruntime as ort
import pytest

from vqinc.runtime.cli import main
from vqinc.runtime.model_dir import Model
from vqinc.runtime.ort import providers as prov

TEST_PROVIDER_ENV = "VQINC_TEST_PROVIDER"  # read by tests/conftest.py (not importable: tests/ops has a conftest)
CUDA = "CUDAExecutionProvider"
needs_no_cuda = pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this onnxruntime has CUDA")


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(prov, "_warned", set())


def test_a_string_is_refused_not_iterated(exported):
    with pytest.raises(TypeError, match=r"list of provider names such as \['CPUExecutionProvider'\]"):
        Model.load(exported["llama-none"].model_dir, providers="CPUExecutionProvider")


@pytest.mark.parametrize("bad", [5, {"CPUExecutionProvider": {}}, [5], [None]])
def test_a_non_list_or_non_str_entry_is_a_type_error_not_blamed_on_a_graph(exported, bad):
    with pytest.raises(TypeError, match="providers must be") as info:
        Model.load(exported["llama-none"].model_dir, providers=bad)
    assert ".onnx" not in str(info.value)


def test_unknown_and_empty_provider_lists(exported):
    with pytest.raises(ValueError, match=r"unknown execution provider 'CUDAExecutionProvder' \(did you mean "
                                         r"'CUDAExecutionProvider'\?\)"):
        Model.load(exported["llama-none"].model_dir, providers=["CUDAExecutionProvder"])
    with pytest.raises(ValueError, match="empty"):
        Model.load(exported["llama-none"].model_dir, providers=[])


@needs_no_cuda
def test_unavailable_provider_alone_is_an_error_not_a_silent_cpu_fallback(exported):
    with pytest.raises(ValueError, match=r"\['CUDAExecutionProvider'\] not available .* pip install 'vqinc\[gpu\]'"):
        Model.load(exported["llama-none"].model_dir, providers=[CUDA])


@needs_no_cuda
def test_unavailable_provider_with_a_fallback_warns_once(exported):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = Model.load(exported["llama-none"].model_dir, providers=[CUDA, "CPUExecutionProvider"])
        Model.load(exported["llama-none"].model_dir, providers=[CUDA, "CPUExecutionProvider"])
    ours = [w for w in caught if issubclass(w.category, RuntimeWarning) and CUDA in str(w.message)]
    assert len(ours) == 1 and "running on ['CPUExecutionProvider']" in str(ours[0].message)
    assert m.providers == ["CPUExecutionProvider"]


@needs_no_cuda
def test_a_session_that_drops_the_provider_is_caught(exported, monkeypatch):
    """The GPU wheel on a machine without a GPU lists CUDA as available, then ORT falls back to CPU."""
    monkeypatch.setattr(prov.ort, "get_available_providers", lambda: [CUDA, "CPUExecutionProvider"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ORT's own "not in available provider names" warning
        with pytest.raises(ValueError, match=r"could not create \['CUDAExecutionProvider'\]"):
            Model.load(exported["llama-none"].model_dir, providers=[CUDA])
        with pytest.warns(RuntimeWarning, match="could not create"):
            m = Model.load(exported["llama-none"].model_dir, providers=[CUDA, "CPUExecutionProvider"])
    assert m.providers == ["CPUExecutionProvider"]


def test_model_says_which_provider_runs(loaded, test_providers):
    m = loaded["llama-none"]
    assert m.providers[0] == (test_providers or ["CPUExecutionProvider"])[0]
    assert all(g.session.get_providers() == m.providers for g in m.executor._graphs.values())  # every session


def test_info_shows_providers(exported, capsys):
    assert main(["info", str(exported["llama-none"].model_dir)]) == 0
    out = capsys.readouterr().out
    assert "providers" in out and "CPUExecutionProvider" in out and ort.__version__ in out


@needs_no_cuda
def test_cli_unavailable_provider_is_one_line_exit_2(exported, tmp_path, capsys):
    f = tmp_path / "t.txt"
    f.write_text("An utterly charming film.")
    assert main(["run", str(exported["llama-none"].model_dir), str(f), "--providers", CUDA]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vqinc run: error:") and len(err.splitlines()) == 1


def test_test_provider_env_var_is_honoured(test_providers):
    assert test_providers == ([os.environ[TEST_PROVIDER_ENV]] if os.environ.get(TEST_PROVIDER_ENV) else None)
