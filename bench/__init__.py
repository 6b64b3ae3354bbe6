"fastmed's benchmarks: `python -m bench [--quick]` runs them all and prints one table of ratios (see `bench/__main__.py`)."
