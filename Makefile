# certwarden: `make run` starts the service on the embedded default, `make test` runs everything.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
DEB_PKGS := mosquitto mosquitto-clients mosquitto-dev libmosquitto-dev libssl-dev openssl gcc make
PLUGIN := var/build/certwarden_plugin.so

.PHONY: run test install system-deps services plugin lint typecheck pytest bench clean

run: install plugin
	$(VENV)/bin/certwarden serve

test: install plugin services lint typecheck pytest

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

# Debian packages the project needs; installed when missing and run as root.
system-deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (run: sudo apt-get install$$missing)"; exit 1; fi; \
	fi

plugin: system-deps $(PLUGIN)

$(PLUGIN): $(wildcard adapters/mosquitto/plugin/*.c) $(wildcard adapters/mosquitto/plugin/*.h)
	@mkdir -p $(dir $@)
	@if ls adapters/mosquitto/plugin/*.c >/dev/null 2>&1; then \
	  $(CC) -std=c11 -O2 -Wall -Wextra -Werror -fPIC -shared -o $@ adapters/mosquitto/plugin/*.c -lcrypto -lssl; \
	else touch $@; fi

# Local services the integration tests talk to; started when installed but down.
services:
	@bash scripts/ensure-services.sh

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: install
	$(VENV)/bin/mypy

pytest: install
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

bench: install plugin services
	$(PY) bench/registry.py

clean:
	rm -rf var/build .mypy_cache .pytest_cache .ruff_cache
