"""Shared fixtures: a tiny byte-level BPE and tiny VQ models (2 layers, d=16) exported once per session.

The weights are drawn with a large scale so attention is peaked and codes really change under
edits (a freshly initialised model at std 0.02 attends almost uniformly and never flips a code).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from checkout_guard import fail_if_outside, take_outside
from checkout_guard import install as _install_checkout_guard
from hypothesis import settings

# Tests need nothing outside the checkout (tests/data holds their data): record every file Python opens.
_install_checkout_guard()
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

settings.register_profile("ci", max_examples=200, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=30, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CORPUS = (
    "The proposal adds a keyword to the grammar. Existing code keeps working; the new form is opt-in.\n"
    "An utterly charming film, though its second half drags and the ending is rushed.\n"
    "Rejected ideas: a decorator, a context manager, and a new builtin function were all considered.\n"
    "Backwards compatibility is preserved: nothing that parses today changes meaning tomorrow.\n"
)

# (family, positions, num_kv_heads): every positional mode, both architectures, GQA included. "llama-rope"
# is exported with position labels (the default for RoPE), "llama-rope-plain" without (position_scale 1:
# an insertion renumbers the rows after it, as models exported before labels do).
CONFIGS = {
    "llama-none": ("llama", "none", 2),
    "llama-rope": ("llama", "rope", 2),
    "llama-rope-plain": ("llama", "rope", 2),
    "opt-learned": ("opt", "learned", 4),
}
POSITION_SCALE = {"llama-rope-plain": 1}


@dataclass
class Exported:
    name: str
    torch_model: object
    tokenizer: object
    model_dir: Path


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS] * 20, trainer)
    return tok


def make_tiny_model(family: str, positions: str, num_kv_heads: int, vocab: int, seed: int = 0,
                    num_codes: int = 8, residual: bool = False, d_model: int = 16):
    import torch

    from vqinc.model.adapt import scratch_model
    from vqinc.model.config import ArchConfig, VQConfig

    arch = ArchConfig(family=family, vocab_size=vocab, d_model=d_model, num_layers=2, num_heads=4,
                      num_kv_heads=num_kv_heads, d_ff=32, max_positions=256, bos_token_id=0)
    vq = VQConfig(num_codes=num_codes, residual=residual, residual_heads=4)
    model = scratch_model(arch, ("neg", "pos"), positions=positions, vq=vq, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tokenizer) -> dict[str, Exported]:
    """All tiny configs, exported once per test session."""
    from vqinc.export.exporter import export_model

    out = {}
    for name, (family, positions, kv) in CONFIGS.items():
        model = make_tiny_model(family, positions, kv, tokenizer.get_vocab_size())
        d = tmp_path_factory.mktemp(name)
        export_model((model, tokenizer), d, show_progress=False, position_scale=POSITION_SCALE.get(name))
        out[name] = Exported(name, model, tokenizer, d)
    return out


@pytest.fixture(scope="session")
def with_decoder(exported, tmp_path_factory):
    """name -> a copy of that tiny model directory with its default decoder.onnx added (made once per session)."""
    import shutil

    from vqinc.export.decoder import add_decoder

    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            d = tmp_path_factory.mktemp(f"dec-{name}")
            shutil.copytree(exported[name].model_dir, d, dirs_exist_ok=True)
            add_decoder(exported[name].torch_model, d)
            made[name] = d
        return made[name]
    return get


TEST_PROVIDER_ENV = "VQINC_TEST_PROVIDER"


@pytest.fixture(scope="session")
def test_providers() -> list[str] | None:
    """`providers=` for the runtime tests: $VQINC_TEST_PROVIDER (e.g. CUDAExecutionProvider) or None (CPU).
    Tests that use it skip, with the reason, when that provider is not available in this onnxruntime."""
    name = os.environ.get(TEST_PROVIDER_ENV)
    if not name:
        return None
    import onnxruntime as ort

    if name not in ort.get_available_providers():
        pytest.skip(f"{TEST_PROVIDER_ENV}={name} is not available in onnxruntime {ort.__version__} "
                    f"(available: {ort.get_available_providers()}); install onnxruntime-gpu on a GPU machine")
    return [name]


@pytest.fixture(scope="session")
def loaded(exported, test_providers):
    """Runtime `Model`s of every tiny config (on $VQINC_TEST_PROVIDER when it is set)."""
    from vqinc.runtime.model_dir import Model

    return {name: Model.load(e.model_dir, threads=1, providers=test_providers) for name, e in exported.items()}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """torch on one thread where a test uses it: tiny ops on a shared, busy machine run up to 40x slower with
    OpenMP spinning on two threads (measured: 68 ms vs 1.7 ms per step of a toy loss). Never imports torch."""
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    take_outside()  # anything opened between tests (pytest's own reporting) is not the test's doing
    result = yield
    fail_if_outside("setup (fixtures)")
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    fail_if_outside("test")
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    result = yield
    fail_if_outside("teardown")
    return result


def pytest_collection_finish(session):
    outside = take_outside()
    if outside:
        raise pytest.UsageError(f"importing the test modules opened files outside the checkout: {outside[:10]}")
