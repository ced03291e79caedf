# red-megatron: the two commands the README opens with.
#   make demo   a small RED run on the embedded default (tiny checkpoint + synthetic task)
#   make test   the test suite (CPU tiers; GPU tests skip without CUDA)
# Both create and fill .venv first when it is missing (scripts/setup_env.sh).
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast clean
venv:
	@bash scripts/setup_env.sh

demo: venv
	@start=$$(date +%s); $(PY) scripts/demo.py $(DEMO_ARGS); rc=$$?; \
	  echo "[demo] finished in $$(( $$(date +%s) - start )) s (exit $$rc)"; exit $$rc

test: venv
	@start=$$(date +%s); $(PY) -m pytest tests $(PYTEST_ARGS); rc=$$?; \
	  echo "[test] finished in $$(( $$(date +%s) - start )) s (exit $$rc)"; exit $$rc

# the inner loop: everything but the long end-to-end tiers (slow: layouts, async, partial rollouts, studies)
test-fast: venv
	@start=$$(date +%s); $(PY) -m pytest tests -m "not slow" -q $(PYTEST_ARGS); rc=$$?; \
	  echo "[test-fast] finished in $$(( $$(date +%s) - start )) s (exit $$rc)"; exit $$rc

clean:
	rm -rf .venv runs *.egg-info
