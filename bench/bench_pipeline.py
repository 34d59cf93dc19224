"""End-to-end latency: a 48-slice 384×384 breast T1 stored by `storescu` into Orthanc,
auto-forwarded to dicom-synth, synthesized and stored back. Prints the time from the end
of storescu to the synthetic series complete in Orthanc, the split of that time over the
job's stages, and the model's seconds per slice.

    .venv/bin/python bench/bench_pipeline.py [--slices 48] [--size 384] [--runs 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.dce.phantom_dicom import write_phantom_series  # noqa: E402
from tests.peers import free_port, start_orthanc, start_redis, storescu  # noqa: E402
from tests.stack import start_stack  # noqa: E402


def one_run(work: Path, seed: int, slices: int, size: int) -> dict:
    redis = start_redis(work / "redis")
    synth_port = free_port()
    orthanc = start_orthanc(work / "orthanc", synth_port=synth_port)
    stack = start_stack(
        work / "svc", broker_url=redis.url, pacs=f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
        env={"SYNTH_DICOM_PORT": str(synth_port)},
    )
    try:
        files = write_phantom_series(work / "t1", seed=seed, n_slices=slices, size=size)
        from pydicom import dcmread

        study = dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
        t0 = time.monotonic()
        storescu(files, "127.0.0.1", orthanc.dicom_port, orthanc.aet)
        t_sent, wall_sent = time.monotonic(), time.time()

        def done():
            for s in orthanc.series_in_study(study):
                if s["MainDicomTags"].get("SeriesDescription", "").startswith("SYNTHETIC") and len(
                    s["Instances"]
                ) == len(files):
                    return s
            return None

        orthanc.wait_for(done, timeout=900, interval=0.05)
        t_done = time.monotonic()
        (job,) = stack.jobs()
        timeline = _timeline(stack.log)
        t = job["timeline"]
        stages = {
            "PACS: Orthanc StableAge 1 s + forward + our completion": t["received"] - wall_sent,
            "classify (received→queued)": t["queued"] - t["received"],
            "wait for worker (queued→running)": t["running"] - t["queued"],
            "synthesize: load, model, build, write (running→exporting)": t["exporting"] - t["running"],
            "export to Orthanc (exporting→done)": t["done"] - t["exporting"],
        }
        return {
            "stages": stages,
            "seconds_per_slice": stages["synthesize: load, model, build, write (running→exporting)"] / slices,
            "storescu_s": t_sent - t0,
            "end_to_end_s": t_done - t_sent,
            "job": job,
            "timeline": timeline,
        }
    finally:
        stack.stop()
        orthanc.stop()
        redis.stop()


def _timeline(log: Path) -> list[str]:
    keys = ("job ", "Task synth.", "succeeded in", "complete")
    return [line.strip() for line in log.read_text(errors="replace").splitlines() if any(k in line for k in keys)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=48)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    results = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as d:
            r = one_run(Path(d), seed=7000 + i, slices=args.slices, size=args.size)
            results.append(r)
            print(f"run {i + 1}: storescu {r['storescu_s']:.2f} s; end of storescu → synthetic series complete "
                  f"in Orthanc {r['end_to_end_s']:.1f} s")
            for name, secs in r["stages"].items():
                print(f"    {name:60s} {secs:6.2f} s")
            print(f"    worker seconds per slice (whole synthesize task)            {r['seconds_per_slice']:6.3f} s")
    e2e = np.array([r["end_to_end_s"] for r in results])
    print(f"\n{args.slices} slices of {args.size}x{args.size}: end to end {e2e.mean():.1f} s "
          f"(min {e2e.min():.1f}, max {e2e.max():.1f}) over {len(e2e)} run(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
