# xenkdump developer entry points.  See README.md.
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
SYSPY := /usr/bin/python3
SIM_HOST ?= /var/tmp/xenkdump-demo/host.yaml
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup test check lint e2e ansible bench demo purgatory man clean

# The main job on a machine without Xen: a simulated host, run with Debian's python3.
demo:
	bash scripts/demo.sh

# Installs what the tests need (apt, venv, kernel, purgatory) and runs the fast tiers.
setup:
	bash scripts/tier.sh setup bash scripts/setup-test-env.sh

test: setup
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check daemon bindings tests bench
	$(PY) -m ruff format --check daemon bindings tests bench
	$(PY) -m mypy

# Real Xen 4.17 under QEMU (installs its own packages; about a minute a scenario).
e2e: setup
	$(PY) -m pytest -q -rP -m e2e tests/e2e

# config/examples/ansible run by Debian's ansible-playbook against localhost (~40 s).
ansible: setup
	$(PY) -m pytest -q -m ansible

# Everything: what CI runs (.ci/run).
check: setup
	bash scripts/tier.sh lint sh -c '$(PY) -m ruff check daemon bindings tests bench && $(PY) -m ruff format --check daemon bindings tests bench && $(PY) -m mypy'
	bash scripts/tier.sh fast $(PY) -m pytest -q
	bash scripts/tier.sh ansible $(PY) -m pytest -q -m ansible
	bash scripts/tier.sh e2e $(PY) -m pytest -q -rP -m e2e tests/e2e

# Benchmarks print figures (and ratios against the peer where one runs here); they
# assert nothing.  The kexec-tools ratio on real Xen comes from the e2e peer scenario.
bench: setup
	$(PY) bench/load.py
	$(PY) bench/reload.py
	$(PY) bench/idle.py
	$(PY) bench/dbus_status.py
	$(PY) bench/cli.py
	$(PY) bench/capture.py

purgatory:
	$(MAKE) -s -C purgatory

# Man pages from man/*.rst (python3-docutils), into man/build/.
MAN_PAGES := $(patsubst man/%.rst,man/build/%,$(wildcard man/*.rst))
man: $(MAN_PAGES)
man/build/%: man/%.rst
	@mkdir -p man/build
	rst2man --strict $< $@

clean:
	$(MAKE) -s -C purgatory clean
	rm -rf .pytest_cache .mypy_cache .ruff_cache man/build
