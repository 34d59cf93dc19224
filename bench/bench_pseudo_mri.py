"""What the pseudo-MRI's CT-guided filter costs: ONNX Runtime seconds per slice of the
committed `pseudo_mri` graph against the same graph cut before the filter (the generator
alone, extracted from the file with `onnx.utils.extract_model`), at several slice sizes, in
one run (the ratio is what to compare on a shared machine).

    .venv/bin/python bench/bench_pseudo_mri.py [--sizes 128 256 512] [--slices 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_synth.registry import load_card  # noqa: E402


def generator_only(onnx_path: Path, out: Path) -> Path | None:
    """The graph up to the generator's tanh (None when no filter follows it)."""
    import onnx
    from onnx.utils import extract_model

    graph = onnx.load(str(onnx_path)).graph
    tanh = [n for n in graph.node if n.op_type == "Tanh"]
    if not tanh or tanh[-1].output[0] == graph.output[0].name:
        return None
    extract_model(str(onnx_path), str(out), [graph.input[0].name], [tanh[-1].output[0]])
    return out


def seconds_per_slice(path: Path, size: int, slices: int, repeats: int, threads: int) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).uniform(-1, 1, (slices, 1, size, size)).astype(np.float32)
    sess.run(None, {name: x[:1]})  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for k in range(0, slices, 4):  # the runtime's batch of 4
            sess.run(None, {name: x[k:k + 4]})
        best = min(best, (time.perf_counter() - t) / slices)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    p.add_argument("--slices", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models-dir", type=Path, default=None)
    a = p.parse_args(argv)
    card = load_card("pseudo_mri", a.models_dir)
    with tempfile.TemporaryDirectory() as tmp:
        gen = generator_only(card.onnx_path, Path(tmp) / "generator.onnx")
        if gen is None:
            print(f"pseudo_mri {card.version}: no filter after the generator; nothing to compare")
            return 0
        print(f"pseudo_mri {card.version}, {a.threads} thread(s), best of {a.repeats}, batches of 4")
        print("| slice | generator s/slice | with filter s/slice | filter share |")
        print("|---|---|---|---|")
        for size in a.sizes:
            g = seconds_per_slice(gen, size, a.slices, a.repeats, a.threads)
            f = seconds_per_slice(card.onnx_path, size, a.slices, a.repeats, a.threads)
            print(f"| {size}x{size} | {g:.4f} | {f:.4f} | {(f - g) / f:.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
