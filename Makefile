# xivo-ha: the two commands are `make simulate` and `make check`.
# Both install what they need on a fresh Debian bookworm machine (as root).

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
DIST := dist
DEBIAN_PACKAGES := python3 python3-venv python3-pip python3-plumbum python3-psycopg \
	python3-jinja2 python3-configobj python3-scapy python3-matplotlib \
	postgresql-15 postgresql-client-15 openssh-server openssh-client rsync iputils-ping \
	iproute2 nftables iptables kamailio kamailio-postgres-modules sip-tester sshpass cron debootstrap \
	docker.io docker-compose debhelper dh-python pybuild-plugin-pyproject python3-setuptools python3-all \
	lintian fakeroot build-essential procps util-linux

.PHONY: check check-fast simulate deb deps venv dockerd images bench clean

# The tests that need no docker mostly wait on servers and processes: they run on two
# workers (pytest-xdist).  The docker tests run after them, alone, since they measure
# outage durations; `check` fails if either run fails.
check: deps venv dockerd deb
	status=0; $(PYTEST) -ra -n 2 -m "not docker" || status=$$?; \
	$(PYTEST) -ra -m docker || status=$$?; \
	exit $$status

check-fast: venv
	$(PYTEST) -ra -n 2 -m "not docker"

simulate: deps venv dockerd deb images
	$(VENV)/bin/xivo-ha-simulator run --scenario power-off --failback-after 60 \
		--phones 200 --time-scale 10 --report-dir simulation-report

deps:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

dockerd:
	@if ! docker info >/dev/null 2>&1; then \
		echo "Starting dockerd"; \
		(setsid dockerd >/var/log/xivo-ha-dockerd.log 2>&1 &); \
		for i in $$(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done; \
		docker info >/dev/null 2>&1 || { echo "dockerd did not start: see /var/log/xivo-ha-dockerd.log"; exit 1; }; \
	fi

deb:
	@dpkg-checkbuilddeps 2>/dev/null || { \
		echo "Installing the build dependencies of debian/control"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -qq --no-install-recommends ./ >/dev/null; }
	rm -rf $(DIST) && mkdir -p $(DIST)
	dpkg-buildpackage -us -uc -b >$(DIST)/build.log 2>&1 || { tail -40 $(DIST)/build.log; exit 1; }
	mv ../xivo-ha_*.deb ../xivo-ha-simulator_*.deb ../xivo-ha_*.changes ../xivo-ha_*.buildinfo $(DIST)/
	lintian --fail-on error $(DIST)/*.changes | tee $(DIST)/lintian.txt

images: dockerd deb
	simulator/node/build-images

bench: venv
	$(PY) bench/replication.py
	$(PY) bench/replication_stream.py
	$(PY) bench/check_overhead.py
	$(PY) bench/simulator_capacity.py
	$(PY) bench/registration_lag.py
	$(PY) bench/incall_routing.py

clean:
	rm -rf $(DIST) $(VENV) simulation-report .pytest_cache
