# Two commands on a fresh machine (Python 3.11 with venv; pip reaches PyPI):
#   make demo   - fine-tune the embedded demo with a real 2-worker ps-lite job
#   make test   - the whole test suite (CI runs exactly this through .ci/run)
#   make test-fast - the tests that need neither root nor MXNet processes (under a minute)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast bench clean

$(BIN)/mxft-launch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/mxft-launch
	$(BIN)/mxft-launch --local jobs/demo.yaml

# The multi-host tests run real OpenSSH servers in network namespaces (root, iproute2).
/usr/sbin/sshd:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server iproute2 >/dev/null

# --launcher srun is tested on a real Slurm (slurmctld here, a slurmd in each namespace host: tests/slurm.py).
/usr/sbin/slurmd:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null

test: $(BIN)/mxft-launch /usr/sbin/sshd /usr/sbin/slurmd
	$(BIN)/python -m pytest -q

test-fast: $(BIN)/mxft-launch
	$(BIN)/python -m pytest -q -m "not integration"

/usr/bin/rsync:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync >/dev/null

bench: $(BIN)/mxft-launch /usr/sbin/sshd /usr/bin/rsync
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) runs *.egg-info
