# Two entry points: `make demo` (train the margin baseline on the embedded glyphs data with
# 2 Ray Train workers) and `make test` (the whole suite). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench smoke clean

# The install is about 8 GB (torch's CUDA build and its libraries run on CPU too): check the
# disk first, so that a full disk is one line here and not an OSError from inside pip.
NEED_KB := 8400000

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { free=$$(df -Pk . | awk 'NR==2 {print $$4}'); \
	  if [ "$$free" -lt $(NEED_KB) ]; then \
	    echo "make: installing .venv needs about 8 GB free on the disk of $$(pwd); $$((free / 1024)) MB are free" >&2; \
	    exit 1; fi; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-cache-dir --upgrade pip
	$(BIN)/python -m pip install --quiet --no-cache-dir -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/reprlab train margin/glyphs --output runs/demo-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/reprlab bench loss
	$(BIN)/reprlab bench eval

# The cluster launcher's config used for real on this machine (root: a throwaway user, sshd on
# 127.0.0.1:22); about 2.5 minutes, so not part of `make test` (docs/cluster.md, step 0).
smoke: $(STAMP)
	$(BIN)/reprlab cluster smoke

clean:
	rm -rf $(VENV) runs .pytest_cache
