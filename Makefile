# vmigrate.v2v — the two commands a person needs: `make demo` and `make test`.
# Both install what they need (Debian packages via tests/lab/lab deps, Python via .venv).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
COLL_LINK := .collections/ansible_collections/vmigrate/v2v
SANITY_DIR := tests/output/sanity/ansible_collections/vmigrate/v2v
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: deps venv lab lab-down demo test lint ruff sanity ansible-lint unit integration bench build clean

deps:
	tests/lab/lab deps

$(VENV)/.installed: requirements.txt
	/usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

$(COLL_LINK):
	mkdir -p $(dir $(COLL_LINK))
	ln -sfn ../../.. $(COLL_LINK)

venv: deps $(VENV)/.installed $(COLL_LINK)

lab: venv
	tests/lab/lab up

lab-down:
	tests/lab/lab down

demo: lab
	$(VENV)/bin/ansible-playbook playbooks/demo.yml

ruff: venv
	$(VENV)/bin/ruff check plugins tests bench
	$(VENV)/bin/ruff format --check plugins tests bench

# ansible-test needs the collection under ansible_collections/<ns>/<name>: copy the
# tracked files there (a symlink would be resolved back to this checkout's path).
sanity: venv
	rm -rf tests/output/sanity && mkdir -p $(SANITY_DIR)
	git ls-files -co --exclude-standard | grep -v '^tests/output/' | rsync -a --files-from=- ./ $(SANITY_DIR)/
	cd $(SANITY_DIR) && $(CURDIR)/$(VENV)/bin/ansible-test sanity --python 3.11 --color no \
	  --skip-test shebang --exclude tests/lab/ --exclude bench/

ansible-lint: venv
	$(VENV)/bin/ansible-lint --profile production --offline

lint: ruff sanity ansible-lint

unit: venv
	$(VENV)/bin/pytest tests/unit

integration: lab
	$(VENV)/bin/pytest tests/integration

test: lint unit integration

bench: lab
	$(PY) bench/run.py

build: venv
	$(VENV)/bin/ansible-galaxy collection build --force

clean:
	rm -rf tests/output .pytest_cache .ruff_cache vmigrate-v2v-*.tar.gz
