"""Queue names, task names and the Celery configuration, as plain data.

The service enqueues by task name and the worker defines the tasks; both build their
Celery app from this dict, so neither imports the other (and this module imports no
Celery, so `dicom_synth` stays free of it).
"""

from __future__ import annotations

from typing import Any

QUEUE_DEFAULT = "default"  # classification and routing: light, CPU
QUEUE_GPU = "gpu"  # synthesis: one model run at a time per worker process
QUEUE_EXPORT = "export"  # C-STORE to the PACS: network-bound, run by the service

TASK_CLASSIFY = "synth.classify"
TASK_SYNTHESIZE = "synth.synthesize"
TASK_EXPORT = "synth.export"


def task_for_status(status: str) -> str | None:
    """The task that moves a job on from `status` (None for final states)."""
    return {
        "received": TASK_CLASSIFY,
        "classified": TASK_CLASSIFY,
        "queued": TASK_SYNTHESIZE,
        "running": TASK_SYNTHESIZE,
        "exporting": TASK_EXPORT,
    }.get(str(status))


def celery_config(broker_url: str) -> dict[str, Any]:
    """Settings shared by every Celery app of the project."""
    return {
        "broker_url": broker_url,
        # Results live in the job store; Celery's result backend is not used.
        "task_ignore_result": True,
        "result_backend": None,
        # A task is acknowledged when it finished, so a worker that dies mid-job
        # hands it to another; tasks are idempotent, so running twice is harmless.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": QUEUE_DEFAULT,
        "task_routes": {
            TASK_CLASSIFY: {"queue": QUEUE_DEFAULT},
            TASK_SYNTHESIZE: {"queue": QUEUE_GPU},
            TASK_EXPORT: {"queue": QUEUE_EXPORT},
        },
        "task_serializer": "json",
        "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
        # Longer than any synthesis, else Redis redelivers a running task.
        "broker_transport_options": {"visibility_timeout": 6 * 3600},
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }
