# Synthesis worker on an NVIDIA GPU: ONNX Runtime with the CUDA provider, no PyTorch.
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 SYNTH_DATA_DIR=/data DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/* && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md ./
COPY dicom_synth ./dicom_synth
COPY service ./service
COPY worker ./worker
COPY models ./models
# onnxruntime and onnxruntime-gpu install the same module: keep only the GPU build.
RUN pip install --no-cache-dir '.[gpu]' && pip uninstall -y onnxruntime \
 && pip install --no-cache-dir --force-reinstall --no-deps 'onnxruntime-gpu>=1.17' \
 && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"
RUN useradd --system --uid 10001 synth && mkdir -p /data && chown synth /data
USER synth
CMD ["celery", "-A", "worker.app", "worker", "-Q", "gpu", "--pool", "solo", "-n", "gpu@%h"]
