"""A (source, target) pair's operating point, moved after training and chosen on the
validation subjects.

With `gate_source` the decoder's input gate has a learnt logit bias per (source, target)
pair (`Decoder.gate_pair`): output = g*input + (1-g)*decoded. Raising one pair's bias by b
passes more of the input through and leaves the decoder's drawing only where the gate was
confidently shut. For T1 -> T1c that trades how much of the enhancing rim is drawn against
how much of the rest of the head is redrawn (and so mis-drawn) instead of copied: the
input *is* the right answer outside the enhancing structures.

`calibrate` scores a grid of b on the validation subjects (never test ones), the way the
evaluation does (both conventions, every metric, against the input and the histogram match,
and the error inside the tumour), behind the same input-guided filter; `smallest_passing`
names the smallest b at which the model beats both baselines on every metric there.

    python -m models.brain.gate_bias --checkpoint runs/brain/latest.pt --pair t1 t1c
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from models.brain.networks import ConditionalTranslator
from models.brain.phantom import CONTRASTS, generate_subject, split_seeds
from models.guided_filter import GuidedFilter

GRID = (0.0, 1.0, 2.0, 3.0, 4.0, 4.5, 5.0, 5.5, 6.0, 7.0, 8.0)


def parse_pair_bias(text: str) -> tuple[str, str, float]:
    """"t1:t1c=5" -> ("t1", "t1c", 5.0)."""
    pair, eq, value = text.partition("=")
    src, colon, tgt = pair.partition(":")
    if not (eq and colon) or src not in CONTRASTS or tgt not in CONTRASTS or src == tgt:
        raise ValueError(f"gate bias {text!r} is not SOURCE:TARGET=BIAS with two different contrasts of {CONTRASTS}")
    return src, tgt, float(value)


def format_pair_bias(biases: Iterable[tuple[str, str, float]]) -> list[str]:
    return [f"{s}:{t}={b:g}" for s, t, b in biases]


def add_pair_bias_argument(p: argparse.ArgumentParser, default: Sequence[tuple[str, str, float]],
                           when: str = "") -> None:
    """`--gate-bias SOURCE:TARGET=BIAS ...` / `--no-gate-bias`; with `when`, the default is
    None (the caller picks `default` then, e.g. only for the demo config) and only shown."""
    shown = (" ".join(format_pair_bias(default)) or "none") + (f" {when}" if when else "")
    p.add_argument("--gate-bias", nargs="+", type=parse_pair_bias, default=None if when else list(default),
                   metavar="SRC:TGT=B",
                   help=f"add B to a pair's learnt gate logit before export (default: {shown}; "
                        "choose it with python -m models.brain.gate_bias)")
    p.add_argument("--no-gate-bias", dest="gate_bias", action="store_const", const=[])


def pair_bias_flags(biases: Sequence[tuple[str, str, float]], default: Sequence[tuple[str, str, float]]) -> str:
    """The command-line flags that choose `biases` when the default is `default`."""
    if list(biases) == list(default):
        return ""
    return " --no-gate-bias" if not biases else " --gate-bias " + " ".join(format_pair_bias(biases))


def apply_pair_bias(translator: ConditionalTranslator, biases: Iterable[tuple[str, str, float]]) -> None:
    """Add each bias to its pair's gate logit, in place (the graph exports it as a weight)."""
    pair = translator.decoder.gate_pair
    biases = list(biases)
    if biases and pair is None:
        raise ValueError("this network's gate has no per-pair bias (trained without gate_source)")
    with torch.no_grad():
        for src, tgt, b in biases:
            pair[CONTRASTS.index(src), CONTRASTS.index(tgt)] += b


def calibrate(translator: ConditionalTranslator, src: str, tgt: str, grid: Sequence[float] = GRID,
              split: str = "val", n_subjects: int = 4, post_filter: GuidedFilter | None = None,
              n_slices: int = 16, size: int = 128) -> list[dict]:
    """One row per bias: the pooled tables, the shortfalls against both baselines, and the
    model's error inside the tumour as a fraction of the input's."""
    from dicom_synth.intensity import normalise_slices
    from models.brain.evaluate import fit_histmatch
    from models.common.evaluate import body_mask, score_case, shortfalls, summarise, unit_slices

    if split == "test":
        raise ValueError("calibrate on validation (or training) subjects, never the test ones")
    gate_pair = translator.decoder.gate_pair
    if gate_pair is None:
        raise ValueError("this network's gate has no per-pair bias (trained without gate_source)")
    histmatch = fit_histmatch()
    eye = torch.eye(len(CONTRASTS))
    cases = []
    for seed in split_seeds(split, n_subjects):
        s = generate_subject(seed, n_slices=n_slices, size=size)
        x = s.images[src]
        mask = body_mask(x)
        x01 = unit_slices(x)
        cases.append({"x": torch.from_numpy(normalise_slices(x)[:, None]), "x01": x01, "mask": mask,
                      "y01": unit_slices(s.images[tgt]), "lesion": s.tumour_fraction > 0.5,
                      "histmatch": histmatch(x01, mask, tgt)})
    i, j = CONTRASTS.index(src), CONTRASTS.index(tgt)
    learnt = float(gate_pair[i, j].detach())
    rows = []
    try:
        for b in grid:
            with torch.no_grad():
                gate_pair[i, j] = learnt + b
            recs, err = [], np.zeros(2)
            for c in cases:
                n = len(c["x"])
                with torch.no_grad():
                    out = translator(c["x"], eye[[j]].repeat(n, 1), eye[[i]].repeat(n, 1))[:, 0].numpy()
                if post_filter is not None:  # the graph's filter, guided by the input as exported
                    out = post_filter.smooth(out, c["x"][:, 0].numpy())
                p01 = np.clip((out + 1) / 2, 0, 1)
                recs.append({"scores": score_case(c["y01"], {"model": p01, "identity": c["x01"],
                                                             "histmatch": c["histmatch"]}, c["mask"])})
                err += [np.abs(p01 - c["y01"])[c["lesion"]].sum(), np.abs(c["x01"] - c["y01"])[c["lesion"]].sum()]
            table = summarise(recs)
            rows.append({"bias": float(b), "table": table, "shortfalls": shortfalls(table, ("identity", "histmatch")),
                         "tumour_vs_input": float(err[0] / err[1]) if err[1] > 0 else float("nan")})
    finally:
        with torch.no_grad():
            gate_pair[i, j] = learnt
    return rows


def smallest_passing(rows: Sequence[Mapping]) -> float | None:
    """The smallest bias with no shortfall (None if every bias of the grid has one)."""
    passing = [r["bias"] for r in rows if not r["shortfalls"]]
    return min(passing) if passing else None


def format_rows(rows: Sequence[Mapping], src: str, tgt: str) -> str:
    lines = [f"{src} -> {tgt}, gate bias added to the learnt pair logit; model / input (identity), "
             "mean over the validation subjects",
             "| bias | body SSIM | body PSNR | body MAE | unit MAE | tumour error vs input's | shortfalls |",
             "|---|---|---|---|---|---|---|"]
    def cell(table: Mapping, conv: str, metric: str, fmt: str) -> str:
        return f"{table['model'][conv][metric][0]:{fmt}} / {table['identity'][conv][metric][0]:{fmt}}"

    for r in rows:
        t = r["table"]
        lines.append(f"| {r['bias']:g} | {cell(t, 'body', 'ssim', '.4f')} | {cell(t, 'body', 'psnr', '.2f')} | "
                     f"{cell(t, 'body', 'mae', '.4f')} | {cell(t, 'unit', 'mae', '.4f')} | "
                     f"{r['tumour_vs_input']:.3f} | {len(r['shortfalls'])} |")
    best = smallest_passing(rows)
    lines.append("smallest bias beating both baselines on every metric: "
                 + ("none in the grid" if best is None else f"{best:g}"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from models.brain.recipe import DEMO_POST_FILTER
    from models.brain.train import load_translator
    from models.guided_filter import add_post_filter_argument, post_filter_from

    p = argparse.ArgumentParser(description="Choose a (source, target) pair's gate bias on validation subjects.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--pair", nargs=2, default=("t1", "t1c"), metavar=("SOURCE", "TARGET"))
    p.add_argument("--grid", type=float, nargs="+", default=list(GRID))
    p.add_argument("--subjects", type=int, default=4, help="validation subjects (52000..)")
    p.add_argument("--threads", type=int, default=1)
    add_post_filter_argument(p, DEMO_POST_FILTER)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t, _, _ = load_translator(a.checkpoint)
    rows = calibrate(t.eval(), *a.pair, grid=a.grid, n_subjects=a.subjects, post_filter=post_filter_from(a.post_filter))
    print(format_rows(rows, *a.pair))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
