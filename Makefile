# Two commands on a fresh machine (Python 3.11 with venv; pip reaches PyPI):
#   make demo   - fine-tune the embedded demo with a real 2-worker ps-lite job
#   make test   - the whole test suite (CI runs exactly this through .ci/run)
#   make test-fast - the tests that need neither root nor MXNet processes (under a minute)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast bench clean
.PRECIOUS: $(VENV)/.installed-%

# One venv; each command installs its own extra into it: the demo's (scikit-learn's digits) or the tests'.
$(VENV)/.installed-%: pyproject.toml
	test -x $(BIN)/pip || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[$*]'
	touch $@

demo: $(VENV)/.installed-demo
	$(BIN)/mxft-launch --local jobs/demo.yaml

# The multi-host tests run real OpenSSH servers in network namespaces (root, iproute2).
/usr/sbin/sshd:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server iproute2 >/dev/null

# --launcher srun is tested on a real Slurm (slurmctld here, a slurmd in each namespace host: testing/slurm.py).
/usr/sbin/slurmd:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null

# The project's modules compiled once, as an installed package's are: the suite starts about a thousand Python
# processes, and each would compile what it imports again (PYTHONDONTWRITEBYTECODE, set on some machines, keeps
# them from saving it).
test: $(VENV)/.installed-test /usr/sbin/sshd /usr/sbin/slurmd
	$(BIN)/python -m compileall -q launcher cluster trainer testing >/dev/null
	$(BIN)/python -m pytest -q

# Slurm's own scontrol expands an allocation's node list (cluster/slurm.py); its tests need it, not a cluster.
/usr/bin/scontrol:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-client >/dev/null

test-fast: $(VENV)/.installed-test /usr/bin/scontrol
	$(BIN)/python -m pytest -q -m "not integration"

/usr/bin/rsync:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync >/dev/null

bench: $(VENV)/.installed-test /usr/sbin/sshd /usr/bin/rsync
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) runs *.egg-info
