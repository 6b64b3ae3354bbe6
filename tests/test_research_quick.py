"""research/: the records (committed notebooks with outputs), the results table, and the runner behind `make research`.

These tests are quick (one tiny notebook is executed); running the research notebooks themselves is `make research`."""
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'research'))
import run_notebooks  # noqa: E402

STUDY_NOTEBOOKS = ['research/paper_a/nodulemnist3d_classification.ipynb', 'research/paper_a/ixi_tiny_skull_stripping.ipynb',
                   'research/brats/msd_task01_seed_study.ipynb', 'research/brats/brats2013_real_data_check.ipynb',
                   'research/vestibular_schwannoma/vs_loss_study.ipynb',
                   'research/hippocampus_correction/hippocampus_correction.ipynb']


def test_runner_finds_every_study_notebook():
    found = [str(p.relative_to(ROOT)) for p in run_notebooks.research_notebooks()]
    assert set(STUDY_NOTEBOOKS) <= set(found), found
    assert all(re.fullmatch(r'research/[^/]+/[^/]+\.ipynb', f) for f in found)  # research/medmnist3d/*.ipynb included by glob


@pytest.mark.parametrize('rel', STUDY_NOTEBOOKS)
def test_record_is_a_complete_run(rel):
    "A committed research notebook keeps the outputs of one complete, error-free run, cells executed in order."
    nb = nbformat.read(ROOT / rel, as_version=4)
    code = [c for c in nb.cells if c.cell_type == 'code' and c.source.strip()]
    counts = [c.execution_count for c in code]
    assert None not in counts, f"{rel}: {counts.count(None)} code cells were not executed"
    assert counts == sorted(counts) and len(set(counts)) == len(counts), f"{rel}: cells not run once, top to bottom: {counts}"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == 'error'], f"{rel}: the record holds an error"
    assert sum('image/png' in o.get('data', {}) for o in outputs) >= 1, f"{rel}: the record keeps no figure"
    text = ''.join(o.get('text', '') + str(o.get('data', {}).get('text/plain', '')) for o in outputs)
    real = 'brats2013' in rel or 'REAL-DATA RUN' in text  # records of runs on local real data say so
    assert 'OFFLINE SMOKE RUN' in text or real, f"{rel}: offline figures must say they are smoke figures"


def _table_rows(readme: str) -> list[list[str]]:
    "Cells of the rows of the results table (the first markdown table of the README)."
    section = readme.split('\n## Results', 1)[1].split('\n## ', 1)[0]
    lines = [l for l in section.splitlines() if l.startswith('|')]
    return [[c.strip() for c in l.strip('|').split('|')] for l in lines[2:]]


def test_readme_results_table():
    readme = (ROOT / 'research' / 'README.md').read_text()
    rows = _table_rows(readme)
    assert all(len(r) == 7 for r in rows), [r for r in rows if len(r) != 7]
    studies = [r[0] for r in rows]
    for study in ('OrganMNIST3D', 'NoduleMNIST3D', 'AdrenalMNIST3D', 'FractureMNIST3D', 'VesselMNIST3D', 'SynapseMNIST3D'):
        assert sum(study in s and 'MedMNIST' in s and 'Paper A' not in s for s in studies) == 2, study  # 28³ and 64³
    for study in ('Paper A: NoduleMNIST3D', 'Paper A: IXI Tiny', 'BraTS: MSD Task01', 'BraTS 2013', 'Vestibular schwannoma',
                  'MSD Hippocampus: click-guided correction'):
        assert any(s.startswith(study) for s in studies), study
    for r in rows:  # a row not run has no number in the fastmed column
        if 'not yet run' in r[3] or 'pending' in r[3]: assert not re.search(r'\d\.\d', r[3]), r


def test_runner_fails_on_a_failing_notebook_and_keeps_the_source(tmp_path):
    good, bad = tmp_path / 'good.ipynb', tmp_path / 'bad.ipynb'
    for path, src in ((good, "import os; print(os.environ['FASTMED_OFFLINE'])"), (bad, "raise ValueError('boom')")):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src)])
        nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
        nbformat.write(nb, path)
    before = {p: p.read_bytes() for p in (good, bad)}
    out = tmp_path / 'out'
    code = run_notebooks.main([str(good), str(bad), '--out', str(out), '--timeout', '120'])
    assert code == 1
    assert {p: p.read_bytes() for p in (good, bad)} == before  # the committed notebooks are not touched
    executed = sorted(out.rglob('*.ipynb'))
    assert [p.name for p in executed] == ['bad.ipynb', 'good.ipynb']
    good_out = nbformat.read(next(p for p in executed if p.name == 'good.ipynb'), as_version=4)
    assert good_out.cells[0].outputs[0].text.strip() == '1'  # offline mode was on
    bad_out = nbformat.read(next(p for p in executed if p.name == 'bad.ipynb'), as_version=4)
    assert bad_out.cells[0].outputs[0].ename == 'ValueError'
