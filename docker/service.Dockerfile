# Gateway, DICOM listener and export worker: ONNX Runtime on the CPU, no PyTorch.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 SYNTH_DATA_DIR=/data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY dicom_synth ./dicom_synth
COPY service ./service
COPY worker ./worker
COPY models ./models
RUN pip install --no-cache-dir . \
 && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"
RUN useradd --system --uid 10001 synth && mkdir -p /data && chown synth /data
USER synth
VOLUME /data
EXPOSE 8000 11112
CMD ["uvicorn", "service.gateway.main:app", "--host", "0.0.0.0", "--port", "8000"]
