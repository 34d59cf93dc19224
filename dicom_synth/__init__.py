"""dicom-synth: shared domain types and pure DICOM functions.

This package is imported by both the service (gateway, listener, export) and the
worker (Celery tasks, ONNX inference). It must never import FastAPI, Celery,
pynetdicom or torch, so either side can use it without pulling in the other.
"""

__version__ = "0.1.0"
