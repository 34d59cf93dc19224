"""DICOMweb timings: a 48-slice 384×384 breast T1 STOWed to the gateway (the service as
`make run` starts it, on redis-server), the time until its synthetic series is complete in
QIDO-RS, and WADO-RS of the same source series from the gateway next to Orthanc's
DICOMweb plugin (best of 3, dicomweb-client as the client for both).

    .venv/bin/python bench/bench_dicomweb.py [--slices 48] [--size 384]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicomweb_client.api import DICOMwebClient  # noqa: E402
from pydicom import dcmread  # noqa: E402

from models.dce.phantom_dicom import write_phantom_series  # noqa: E402
from tests.peers import start_orthanc, start_redis  # noqa: E402
from tests.stack import start_stack  # noqa: E402


def _best_retrieve(client: DICOMwebClient, study: str, series: str) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(3):
        t = time.monotonic()
        got = client.retrieve_series(study, series)
        times.append(time.monotonic() - t)
        size = sum(len(d.PixelData) for d in got)
    return min(times), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument("--size", type=int, default=384)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-dicomweb-"))
    redis = start_redis(tmp / "redis")
    stack = start_stack(tmp / "svc", broker_url=redis.url)
    orthanc = start_orthanc(tmp / "orthanc", dicomweb=True)
    try:
        sources = [dcmread(f) for f in write_phantom_series(tmp / "t1", seed=905, n_slices=args.slices,
                                                            size=args.size)]
        study, source = sources[0].StudyInstanceUID, sources[0].SeriesInstanceUID
        ours = DICOMwebClient(url=f"{stack.url}/dicomweb", headers={"Authorization": f"Bearer {stack.token}"})
        theirs = DICOMwebClient(url=f"{orthanc.http_url}/dicom-web")
        t0 = time.monotonic()
        ours.store_instances(sources, study_instance_uid=study)
        stow = time.monotonic() - t0
        while not [s for s in ours.search_for_series(study, search_filters={"SeriesDescription": "SYNTHETIC*"})
                   if s["00201209"]["Value"][0] == args.slices]:
            time.sleep(0.1)
        visible = time.monotonic() - t0
        theirs.store_instances(sources)
        ours_t, n = _best_retrieve(ours, study, source)
        theirs_t, _ = _best_retrieve(theirs, study, source)
        print(f"{args.slices} slices {args.size}x{args.size}: STOW {stow:.2f} s; "
              f"STOW to the synthetic series in QIDO-RS {visible:.1f} s")
        print(f"WADO-RS of the source series, best of 3: gateway {ours_t:.2f} s ({n / ours_t / 1e6:.0f} MB/s), "
              f"Orthanc {theirs_t:.2f} s ({n / theirs_t / 1e6:.0f} MB/s)")
    finally:
        orthanc.stop()
        stack.stop()
        redis.stop()


if __name__ == "__main__":
    main()
