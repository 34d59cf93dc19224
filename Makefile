# dicom-synth — two commands: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DEB_PACKAGES := redis-server orthanc orthanc-dicomweb dcmtk dicom3tools postgresql chromium chromium-driver haproxy npm
# Commands that prove each Debian package is there (postgresql: its server programs are
# under /usr/lib/postgresql/<major>/bin; pg_ctlcluster comes with them).
DEB_COMMANDS := redis-server Orthanc storescu findscu echoscu dciodvfy pg_ctlcluster chromium chromedriver haproxy npm

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
	@missing=0; for c in $(DEB_COMMANDS); do command -v $$c >/dev/null || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  echo "installing Debian packages: $(DEB_PACKAGES)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $(DEB_PACKAGES) >/dev/null; \
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
