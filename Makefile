# The only entry points: `make demo` and `make test` (both idempotent; both install what they need).
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := qemu-system-x86 qemu-system-arm qemu-utils busybox-static cpio lz4 iproute2 \
	dnsmasq-base dnsmasq-utils nftables debootstrap e2fsprogs chromium prometheus systemd postgresql
# binaries whose presence proves the packages above are installed
APT_PROBES := qemu-system-x86_64 qemu-system-aarch64 qemu-img busybox cpio lz4 ip dnsmasq dhcp_release nft \
	debootstrap mkfs.ext4 chromium promtool systemd-analyze /usr/lib/postgresql/15/bin/initdb
IMAGES := build/images
# the guest images the tests boot (tiny also writes tiny-disk beside it)
TEST_IMAGES := $(IMAGES)/tiny/image.json $(IMAGES)/tiny-arm64/image.json \
	$(IMAGES)/debian/image.json

.PHONY: demo test deps apt venv image lint unit integration bench bench-report web-vendor clean install

# `make install`: Corral in its own virtual environment under PREFIX, the command in
# PREFIX/bin, the systemd unit, and a commented configuration file (kept if one exists).
PREFIX ?= /usr/local
DESTDIR ?=
LIBDIR := $(PREFIX)/lib/corral
UNITDIR ?= /etc/systemd/system

demo: deps
	$(BIN)/corral image build tiny
	scripts/demo.sh

test: deps $(TEST_IMAGES) lint
	CORRAL_IMAGE_PATH=$(CURDIR)/$(IMAGES) $(BIN)/pytest -q --durations=25

unit: venv
	$(BIN)/pytest -q tests/unit

integration: deps $(TEST_IMAGES)
	CORRAL_IMAGE_PATH=$(CURDIR)/$(IMAGES) $(BIN)/pytest -q tests/integration

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

deps: apt venv

apt:
	@missing=0; for b in $(APT_PROBES); do command -v $$b >/dev/null || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  echo "installing Debian packages: $(APT_PACKAGES)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi

venv: $(BIN)/corral

# the command's interpreter line gets -S (no site: packaging/corral tells why and how)
NO_SITE := sed -i '1s/^\(\#!.*python[0-9.]*\)$$/\1 -S/'

$(BIN)/corral: pyproject.toml packaging/corral
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	$(NO_SITE) $(BIN)/corral
	# bytecode now, even where PYTHONDONTWRITEBYTECODE is set: the CLI must start in milliseconds
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m compileall -q src/corral >/dev/null
	touch $@

image: $(TEST_IMAGES)

GUEST_FILES := src/corral/images/_build.py $(wildcard src/corral/images/guest/*)

$(IMAGES)/tiny/image.json: src/corral/images/tiny.py $(GUEST_FILES) | venv
	$(BIN)/corral image build tiny --force --dest $(IMAGES)

$(IMAGES)/tiny-arm64/image.json: src/corral/images/arm64.py $(GUEST_FILES) | venv
	$(BIN)/corral image build tiny-arm64 --force --dest $(IMAGES)

$(IMAGES)/debian/image.json: src/corral/images/debian.py | venv
	$(BIN)/corral image build debian --force --dest $(IMAGES)

bench: deps $(IMAGES)/tiny/image.json
	CORRAL_IMAGE_PATH=$(CURDIR)/$(IMAGES) $(BIN)/python bench/lifecycle.py

# every benchmark, their tables and plots in docs/benchmarks.md (about 20 min; QUICK=1: about 5)
bench-report: deps $(IMAGES)/tiny/image.json
	CORRAL_IMAGE_PATH=$(CURDIR)/$(IMAGES) $(BIN)/python bench/report.py $(if $(QUICK),--quick)

# the web page's JavaScript libraries are committed in src/corral/api/static/vendor; this
# refreshes them from npm at the versions pinned in web/package-lock.json
web-vendor:
	scripts/vendor-web.sh
install:
	python3 -m venv $(DESTDIR)$(LIBDIR)
	$(DESTDIR)$(LIBDIR)/bin/pip install -q --disable-pip-version-check .
	$(NO_SITE) $(DESTDIR)$(LIBDIR)/bin/corral
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(UNITDIR) $(DESTDIR)/etc/corral
	ln -sf $(LIBDIR)/bin/corral $(DESTDIR)$(PREFIX)/bin/corral
	sed 's|@CORRAL@|$(PREFIX)/bin/corral|' packaging/corral.service.in \
	  > $(DESTDIR)$(UNITDIR)/corral.service
	test -e $(DESTDIR)/etc/corral/corral.toml || \
	  install -m 644 packaging/corral.toml $(DESTDIR)/etc/corral/corral.toml
	@echo "installed; start it with: systemctl daemon-reload && systemctl enable --now corral"

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
