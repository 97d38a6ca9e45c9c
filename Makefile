# vmigrate.v2v — the two commands a person needs: `make demo` and `make test`.
# Both install what they need (Debian packages via tests/lab/lab deps, Python via .venv).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
COLL_LINK := .collections/ansible_collections/vmigrate/v2v
SANITY_DIR := /tmp/vmigrate-v2v-sanity/ansible_collections/vmigrate/v2v
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: deps venv lab lab-down lab-proof demo test lint ruff sanity ansible-lint unit faults integration molecule reliability-doc bench build clean

deps:
	test -x tests/lab/lab && tests/lab/lab deps

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

# Proves the lab owns the host state it relies on: from a reset host (as on a fresh
# machine: network undefined, /dev/kvm root-only, daemons stopped, libvirt's capability
# cache empty), `up` must leave every `status` check true, including a libvirt call
# that no longer re-probes qemu. `make test` runs it before the integration tests.
lab-proof: venv
	tests/lab/lab reset
	tests/lab/lab up
	tests/lab/lab status

# The modules one by one (demo.yml), then a plan: three VMs in three waves across
# platforms, a warm one synced and cut over, and the report (demo_plan_lab.yml makes the
# VMs and the plan).
DEMO_PLAN := /var/tmp/vmigrate-demo-plan/plan.v2v.yml
# libguestfs's settings for this host, from lab.env (its appliance kernel; TCG where KVM
# cannot run guests): the convert step inspects guests by default.
WITH_GUESTFS = env $$(sed -n 's/^export \(\(SUPERMIN\|LIBGUESTFS\)_[A-Z_]*=.*\)/\1/p' tests/lab/state/lab.env)
demo: lab
	$(WITH_GUESTFS) $(VENV)/bin/ansible-playbook playbooks/demo.yml
	$(WITH_GUESTFS) $(VENV)/bin/ansible-playbook playbooks/demo_plan_lab.yml
	export VMIGRATE_DEMO_VC_PASSWORD="$$(cat tests/lab/state/vcsim.password)" && \
	export VMIGRATE_DEMO_HV_PASSWORD="$$(cat tests/lab/state/hyperv/password)" && \
	for step in preflight migrate sync cutover report; do \
		echo "== make demo: $$step.yml on $(DEMO_PLAN)"; \
		$(WITH_GUESTFS) $(VENV)/bin/ansible-playbook -i $(DEMO_PLAN) playbooks/$$step.yml || exit 1; \
	done

ruff: venv
	$(VENV)/bin/ruff check plugins tests bench
	$(VENV)/bin/ruff format --check plugins tests bench

# ansible-test needs the collection under ansible_collections/<ns>/<name>: copy the
# tracked files there, outside this git checkout (a symlink would resolve back here).
# The lab, bench and the lab-driven pytest suites in tests/integration and tests/faults/lab (not ansible-test
# integration targets) are test tooling, not collection content: excluded; ruff checks them.
sanity: venv
	rm -rf $(SANITY_DIR) && mkdir -p $(SANITY_DIR) ~/.ansible/test/cache
	v=$$(grep -oP "pip='\\K[0-9.]+" $(VENV)/lib/python3*/site-packages/ansible_test/_internal/python_requirements.py | head -1); \
	  cp tests/sanity/get_pip_offline.py ~/.ansible/test/cache/get_pip_$${v//./_}.py
	git ls-files -co --exclude-standard | rsync -a --files-from=- ./ $(SANITY_DIR)/
	cd $(SANITY_DIR) && $(CURDIR)/$(VENV)/bin/ansible-test sanity --python 3.11 --color no \
	  $(foreach d,tests/lab tests/integration tests/faults/lab bench,$(if $(wildcard $(d)),--exclude $(d)/))

ansible-lint: venv
	$(VENV)/bin/ansible-lint --profile production --offline
	$(VENV)/bin/antsibull-changelog lint

lint: ruff sanity ansible-lint

# Each suite's run writes the rows of docs/reliability.md its tests declared (the
# `reliability` fixture, tests/reliability.py) to build/reliability/<suite>.json.
ROWS := build/reliability
unit: venv
	mkdir -p $(ROWS)
	VMIGRATE_RELIABILITY_ROWS=$(ROWS)/unit.json $(VENV)/bin/pytest tests/unit

# Property-based tests and fuzzing of the spec, the plan parser and the descriptor
# readers (hypothesis, derandomized and bounded: the same examples on every run; < 2 min).
# tests/faults: fuzzed readers, and faults injected into real lab migrations (tests/faults/lab).
# It ends by writing docs/reliability.md (also when a test failed: its rows say proved NO).
faults: lab
	mkdir -p $(ROWS)
	rc=0; VMIGRATE_RELIABILITY_ROWS=$(ROWS)/faults.json $(WITH_GUESTFS) $(VENV)/bin/pytest tests/faults || rc=$$?; \
	  $(RELIABILITY_DOC); exit $$rc

integration: lab
	mkdir -p $(ROWS)
	VMIGRATE_RELIABILITY_ROWS=$(ROWS)/integration.json $(VENV)/bin/pytest tests/integration

# docs/reliability.md, the table of every fault and bad input the suites tried, from the
# row files of the suites that ran (tests/reliability_doc.py, standard library only; a
# suite not run is left out).
RELIABILITY_DOC = python3 tests/reliability_doc.py docs/reliability.md $(foreach s,unit integration faults,$(ROWS)/$(s).json)
reliability-doc:
	$(RELIABILITY_DOC)

# The roles' molecule scenarios (extensions/molecule/<scenario>, docs/testing.md): the
# roles run here against the lab's libvirt; molecule creates and destroys nothing.
# Run from the repo root: molecule finds galaxy.yml and takes the scenarios from
# extensions/molecule; each scenario points ANSIBLE_COLLECTIONS_PATH at .collections.
molecule: lab
	$(WITH_GUESTFS) $(VENV)/bin/molecule test --all

test: lint unit lab-proof integration faults molecule reliability-doc

# a-c measure the engine alone; e runs migrations end to end on the lab (~4 min more).
bench: lab
	$(PY) bench/run.py --only a --only b --only c --only e

build: venv
	$(VENV)/bin/ansible-galaxy collection build --force

clean:
	rm -rf build tests/output .pytest_cache .ruff_cache vmigrate-v2v-*.tar.gz
