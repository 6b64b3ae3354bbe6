# The two commands of the README: `make demo` and `make test`. Both set up .venv on first use.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fastmed-installed

.PHONY: demo test venv export sync-check nbtest pytest readme docs clean bench research

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

demo: venv
	MPLBACKEND=Agg $(BIN)/python -c "from fastmed.demo import main; main()"

export: venv
	$(BIN)/nbdev-export

# nbs/ is the source: exporting must not change fastmed/
sync-check: export
	@git diff --exit-code --stat -- fastmed || (echo "fastmed/ is out of sync with nbs/: run nbdev-export and commit" && exit 1)
	@test -z "$$(git status --porcelain --untracked-files=all -- fastmed)" || (git status --short -- fastmed; echo "untracked files in fastmed/: commit them" && exit 1)

nbtest: venv
	MPLBACKEND=Agg OMP_NUM_THREADS=1 $(BIN)/nbdev-test --n-workers 2 --timing

pytest: venv
	MPLBACKEND=Agg $(BIN)/pytest tests -q

test: sync-check nbtest pytest

# README.md is generated from nbs/index.ipynb (Quarto is not needed)
readme: venv
	$(BIN)/jupyter nbconvert --to markdown nbs/index.ipynb --output-dir . --output README --log-level WARN

# The documentation site offline (Quarto is not needed; nbdev-docs builds the Quarto site where it exists):
# home page, library notebooks and tutorials executed in offline mode (cached by notebook and library hash),
# one API page per module. Open _site/html/index.html. See docs/README.md.
docs: venv
	$(BIN)/python docs/build_docs.py --strict

# Every benchmark, one table of time ratios against baselines (bench/README.md), JSON in bench/results/latest.json.
# `make bench ARGS=--quick` for the under-3-minutes version.
bench: venv
	MPLBACKEND=Agg $(BIN)/python -m bench $(ARGS)

# Every research notebook (research/*/*.ipynb, research/medmnist3d/ included) in its quick/offline mode, in a fresh
# kernel each; the executed copies go to a temporary folder (the committed notebooks keep their recorded outputs).
# Real-data cells use ../shared/data (or FASTMED_DATA) when it exists and are skipped otherwise. Fails if any fails.
research: venv
	OMP_NUM_THREADS=1 $(BIN)/python research/run_notebooks.py $(sort $(wildcard research/*/*.ipynb))

clean:
	rm -rf _docs _proc .pytest_cache demo_output
