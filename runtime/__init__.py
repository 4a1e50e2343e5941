"""vqinc.runtime: the embedded API and incremental engine. Depends on onnxruntime, numpy and tokenizers,
never on torch."""

from vqinc.runtime.format.manifest import ModelDirError
from vqinc.runtime.model_dir import Model, default_model_dir

__all__ = ["Model", "ModelDirError", "default_model_dir"]
