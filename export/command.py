"""`vqinc export`: a trained checkpoint to a verified model directory, or a model directory gaining its
past-KV decoder graph. The CLI (runtime/cli.py) checks its arguments and the export extra, then calls this."""

from __future__ import annotations

import time
from pathlib import Path


def export_command(checkpoint: str, out_dir: str, decoder: str | None = None, full_graph: bool = True,
                   verify: bool = False, position_scale: int | None = None) -> int:
    """Export (with `verify`, check the graphs against PyTorch); 0 when every check passed, 1 otherwise."""
    from vqinc.export.from_dir import is_model_dir

    t = time.perf_counter()
    if is_model_dir(checkpoint):  # a model directory gains its decoder graph (weights read from full.onnx)
        from vqinc.export.decoder import add_decoder
        from vqinc.export.from_dir import model_from_dir

        if Path(checkpoint).resolve() != Path(out_dir).resolve() or decoder is None:
            raise ValueError(f"{checkpoint} is a model directory: it can only gain a decoder graph, in place: "
                             f"vqinc export {checkpoint} {checkpoint} --decoder")
        model, tok = model_from_dir(checkpoint)
        add_decoder(model, out_dir, None if decoder == "auto" else decoder)
        print(f"added decoder.onnx to {out_dir} in {time.perf_counter() - t:.1f} s")
        source = (model, tok)
    else:
        from vqinc.export.exporter import export_model

        man = export_model(checkpoint, out_dir, full_graph=full_graph, position_scale=position_scale)
        print(f"exported {man.spec.num_layers} layers to {out_dir} in {time.perf_counter() - t:.1f} s "
              f"(fingerprint {man.fingerprint})")
        source = checkpoint
        if decoder is not None:
            from vqinc.export.decoder import add_decoder
            from vqinc.model.checkpoint import load_checkpoint

            add_decoder(load_checkpoint(checkpoint)[0], out_dir, None if decoder == "auto" else decoder)
            print(f"added decoder.onnx ({time.perf_counter() - t:.1f} s in all)")
    ok = True
    if verify:
        from vqinc.export.verify import verify as verify_dir
        from vqinc.export.verify import verify_decoder

        report = verify_dir(source, out_dir)
        print(report.table())
        ok = report.ok
        if decoder is not None:
            dec = verify_decoder(out_dir)
            print(dec.table())
            ok = ok and dec.ok
    return 0 if ok else 1
