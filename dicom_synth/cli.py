"""`dicom-synth` command line: classify series, or run the pipeline offline."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dicom_synth import __version__
from dicom_synth.domainguard import GUARD_MODES


def _classify(args: argparse.Namespace) -> int:
    from dicom_synth.classify.cli import run

    return run(args.paths)


def _synthesize(args: argparse.Namespace) -> int:
    """The same steps as a job, without servers: one line of JSON per series found."""
    from dicom_synth.domainguard import guard
    from dicom_synth.multicontrast import load_synthesis_model
    from dicom_synth.pipeline import (
        UnknownTaskError,
        check_task_name,
        decide,
        synthesize_series,
        write_outputs,
    )
    from dicom_synth.registry import UnknownModelError, load_card
    from dicom_synth.series import SeriesReadError, group_series, load_series
    from dicom_synth.taskfit import SourceContrastError, check_source_contrast

    if args.domain_guard is None:
        from dicom_synth.settings import get_settings

        args.domain_guard = get_settings().domain_guard
    try:
        check_task_name(args.task)
        check_source_contrast(args.source_contrast, args.task)
    except (UnknownTaskError, SourceContrastError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    groups = group_series([args.path])
    if not groups:
        print(f"error: no DICOM series under {args.path}", file=sys.stderr)
        return 1
    out_root = Path(args.out)
    status = 0
    for group in groups:
        record: dict = {"source_series_uid": group.series_instance_uid}
        try:
            loaded = load_series(group.files, pixels=True)
            decision = decide(loaded, args.task, args.source_contrast)
            c = decision.classification
            record.update(series_class=c.label if c else None, task=decision.task)
            if decision.task is None and decision.refused:  # what was asked does not fit the series
                record.update(status="refused", reason=decision.reason)
                print(f"error: {decision.reason}", file=sys.stderr)
                status = 1
            elif decision.task is None:
                record.update(status="skipped", reason=decision.reason)
            else:
                card = load_card(decision.task, Path(args.models_dir) if args.models_dir else None)
                model = load_synthesis_model(card)
                outcome = guard(card, model, loaded, args.domain_guard, source_label=decision.source_label)
                if outcome.verdict is not None:
                    record.update(domain=outcome.evidence(args.domain_guard))
                if not outcome.proceed:
                    record.update(status="skipped", reason=outcome.reason)
                else:
                    series = synthesize_series(loaded, model, card, source_label=decision.source_label,
                                               notes=outcome.notes)
                    out_dir = out_root / group.series_instance_uid
                    uids = write_outputs(series, out_dir)
                    record.update(status="done", output_series_uids=uids, out_dir=str(out_dir))
        except (SeriesReadError, UnknownModelError, ValueError) as exc:
            record.update(status="failed", error=str(exc))
            status = 1
        print(json.dumps(record), flush=True)
    return status


def _db_upgrade(args: argparse.Namespace) -> int:  # noqa: ARG001
    """Bring the job database to the newest schema (every process also does on first use)."""
    from dicom_synth.database import current_revision, engine_for
    from dicom_synth.settings import get_settings

    url = get_settings().jobs_db_url
    engine = engine_for(url)  # upgrades to head
    print(f"{engine.url.render_as_string(hide_password=True)}: revision {current_revision(engine)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dicom-synth", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dicom-synth {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("classify", help="one JSON line per series found under the paths")
    p.add_argument("paths", nargs="+", help="files or folders (any file names, nested)")
    p.set_defaults(func=_classify)

    p = sub.add_parser("synthesize", help="run the pipeline offline on the series under PATH")
    p.add_argument("path")
    p.add_argument("--task", default="auto", help="auto (route by class) or a task name")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per source series)")
    p.add_argument("--models-dir", default=None, help="folder of ONNX models and cards")
    p.add_argument("--domain-guard", choices=GUARD_MODES, default=None,
                   help="a series outside its model's training domain: refuse, warn or off "
                        "(default: SYNTH_DOMAIN_GUARD, else refuse)")
    p.add_argument("--source-contrast", default=None,
                   help="what a brain series is when the classifier cannot tell: t1, t2, t1c, flair "
                        "(implies --task brain_contrasts)")
    p.set_defaults(func=_synthesize)

    p = sub.add_parser("db", help="the job database (SYNTH_DATABASE_URL)")
    db = p.add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="migrate it to the newest schema (Alembic upgrade head)").set_defaults(
        func=_db_upgrade)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
