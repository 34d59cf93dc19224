# dicom-synth — two commands: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Each Debian package with the command (or file) that proves it is there; only the missing
# ones are installed (npm: a machine whose Node.js package already ships npm keeps it, since
# Debian's npm would conflict with it). postgresql: its server programs are under
# /usr/lib/postgresql/<major>/bin; pg_ctlcluster comes with them.
DEB_NEEDS := redis-server:redis-server orthanc:Orthanc \
  orthanc-dicomweb:/usr/share/orthanc/plugins/libOrthancDicomWeb.so dcmtk:storescu dicom3tools:dciodvfy \
  postgresql:pg_ctlcluster chromium:chromium chromium-driver:chromedriver haproxy:haproxy npm:npm

.PHONY: run test install install-dev system-deps models lint typecheck bench clean viewer viewer-fetch

$(VENV)/.runtime: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(PIP) install -q -e '.[train,dev]'
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

# Demo models are committed under models/weights; this rebuilds any that are missing
# (needs the train extra; no network).
models: $(VENV)/.runtime
	@$(PY) -m models.ensure_demo || { $(PIP) install -q -e '.[train]' && $(PY) -m models.ensure_demo --build; }

## Serve the demo: HTTP :8000, DICOM AE SYNTH :11112, worker, embedded broker. Ctrl-C stops.
run: $(VENV)/.runtime models
	$(PY) -m service.runner

## The OHIF viewer (npm @ohif/app, pinned; fetched once into $(SYNTH_DATA_DIR)/viewer, default
## var/viewer, needs npm) served by the gateway at http://localhost:8000/viewer/ against its own
## DICOMweb, with the whole service as `make run`. Log in with the admin token (var/api-token).
viewer-fetch: $(VENV)/.runtime
	$(PY) -m service.viewer.fetch

viewer: viewer-fetch models
	@echo "OHIF viewer: http://localhost:$${SYNTH_HTTP_PORT:-8000}/viewer/ (log in with a read token)"
	$(PY) -m service.runner

system-deps:
	@missing=""; for need in $(DEB_NEEDS); do c=$${need#*:}; \
	  command -v $$c >/dev/null || test -e $$c || missing="$$missing $${need%%:*}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

## The whole suite, with real redis-server, Orthanc, PostgreSQL and DCMTK peers over loopback
## (SYNTH_TEST_JOB_DB=postgresql: every test that does not choose a job store uses PostgreSQL).
test: system-deps $(VENV)/.dev models
	$(VENV)/bin/ruff check dicom_synth service worker models tests bench
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check dicom_synth service worker models tests bench
	$(VENV)/bin/mypy dicom_synth service worker

bench: $(VENV)/.dev system-deps
	$(PY) bench/bench_listener.py
	$(PY) bench/bench_pipeline.py
	$(PY) bench/bench_pseudo_mri.py
	$(PY) bench/bench_scale.py --repeat 3 --capacity

clean:
	rm -rf var .pytest_cache
