# The two commands of the README: `make demo` and `make test`. Each does all the set-up it needs on a
# fresh machine (a venv with the pip packages, the npm packages of the local nodes; for the tests, as root,
# the system packages of scripts/install-system-packages.sh: PHP and Go for the callback examples), then runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: setup system-packages demo test lint check-unit check-install bench clean

setup: $(STAMP) $(NODE_STAMP)

# Only the tests need them; the demo does not wait for them.
system-packages:
	@bash scripts/install-system-packages.sh

# Quiet: no pip version notice, no setuptools banner about editable installs (printed on every
# `pip install -e`); errors still show.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	PIP_DISABLE_PIP_VERSION_CHECK=1 $(BIN)/pip install --quiet --upgrade pip
	PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONWARNINGS="ignore:Editable installation" \
		$(BIN)/pip install --quiet -e '.[test]'
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# The demo tooling (devnet/) lives in the checkout, not in the installed daemon: run from here.
demo: setup
	$(BIN)/python -m devnet

lint: setup
	$(BIN)/ruff check watcher chains devnet tests $(wildcard bench)
	$(BIN)/ruff format --check watcher chains devnet
	$(BIN)/mypy

# The unit file: systemd-analyze verify (no complaints) and security --offline (exposure <= 2.0).
check-unit: setup
	bash systemd/check-unit.sh

# `pip install .` into a fresh venv must give a working `deposit-watcher` with its adapters and its
# receiver, and nothing of the demo tooling (-I: the checkout is not on the path).
check-install:
	rm -rf .check-install && $(PYTHON) -m venv .check-install
	PIP_DISABLE_PIP_VERSION_CHECK=1 .check-install/bin/pip install --quiet .
	.check-install/bin/deposit-watcher check-config --config config/regtest.yaml > /dev/null
	.check-install/bin/python -c "from chains.registry import adapter_names as a; n = a(); print('installed adapters:', n); assert {'evm', 'bitcoin-core', 'esplora'} <= set(n)"
	.check-install/bin/python -I -c "import importlib.util as u, watcher.receiver; assert u.find_spec('devnet') is None, 'devnet is installed'"
	rm -rf .check-install

# pytest exits 5 when it collected no tests: that is a failure here, never a pass.
test: system-packages lint check-unit check-install
	$(BIN)/pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: setup
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) node_modules
