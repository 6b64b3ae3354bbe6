"""Run the research notebooks in their quick/offline mode: `python research/run_notebooks.py [NOTEBOOK ...]`.

Each notebook runs in a fresh kernel, in its own folder, with `FASTMED_OFFLINE=1` (synthetic stand-ins, short
training, no network) and, when it exists, the local real-data folder in `FASTMED_DATA` (default `../shared/data`
beside the repository), whose cells the notebooks run and otherwise skip with a printed reason. The executed
copies go to `--out` (a new temporary folder by default), so the committed notebooks, which keep the outputs of the
recorded runs, are not touched; `--record` writes the outputs back into them instead (to refresh a record on
purpose). Exits with status 1 if any notebook fails, and prints a table of wall times.
"""
from __future__ import annotations
import argparse, os, re, sys, tempfile, time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent


def research_notebooks(root: Path = ROOT) -> list[Path]:
    "Every research notebook: research/<study>/*.ipynb, in sorted order (checkpoints excluded)."
    return sorted(p for p in (root / 'research').glob('*/*.ipynb') if '.ipynb_checkpoints' not in p.parts)


def notebook_env(offline: bool = True) -> dict:
    "Environment of the kernels: this one, with the offline switch, FASTMED_DATA if a local data folder exists, inline plots."
    env = {k: v for k, v in os.environ.items() if k != 'MPLBACKEND'}  # inline backend: figures are kept in the outputs
    env.update(FASTMED_OFFLINE='1' if offline else '0', PYTHONHASHSEED='0')
    data = Path(os.environ.get('FASTMED_DATA') or ROOT.parent / 'shared' / 'data')
    if data.is_dir(): env['FASTMED_DATA'] = str(data.resolve())
    else: env.pop('FASTMED_DATA', None)
    return env


def _rel(path: Path) -> Path:
    "`path` relative to the repository root, or just its name if it lies elsewhere."
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else Path(path.name)


def run_notebook(path: Path, out: Path | None, env: dict, timeout: int = 3600) -> tuple[bool, float, str]:
    "Execute `path` in its folder; write the executed copy to `out` (or back into `path` if None): (ok, seconds, error)."
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name='python3', resources={'metadata': {'path': str(path.parent)}})
    start, error = time.perf_counter(), ''
    try: client.execute(env=env)
    except CellExecutionError as e:
        lines = re.sub(r'\x1b\[[0-9;]*m', '', str(e)).strip().splitlines()  # without the traceback's colours
        named = [l for l in lines if re.match(r'[A-Za-z_.]*(Error|Exception|Exit|Interrupt)\b', l)]
        error = (named or lines or [repr(e)])[-1][:300]
    except Exception as e: error = f"{type(e).__name__}: {e}"
    seconds = time.perf_counter() - start
    target = path if out is None else out / _rel(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f'.{target.name}.tmp')
    nbformat.write(nb, tmp)
    os.replace(tmp, target)  # the executed copy appears whole or not at all
    return not error, seconds, error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('notebooks', nargs='*', type=Path, help='notebooks to run (default: research/*/*.ipynb)')
    parser.add_argument('--out', type=Path, help='folder for the executed copies (default: a new temporary folder)')
    parser.add_argument('--record', action='store_true', help='write the outputs back into the notebooks themselves')
    parser.add_argument('--online', action='store_true', help='real-data mode (downloads); default: offline mode')
    parser.add_argument('--timeout', type=int, default=3600, help='seconds allowed per cell')
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or research_notebooks()
    if not paths: print('no research notebooks found'); return 1
    env = notebook_env(offline=not args.online)
    out = None if args.record else (args.out or Path(tempfile.mkdtemp(prefix='fastmed_research_'))).resolve()
    print(f"FASTMED_OFFLINE={env['FASTMED_OFFLINE']} FASTMED_DATA={env.get('FASTMED_DATA', '(none)')}")
    print(f"executed copies -> {out or 'the notebooks themselves (--record)'}", flush=True)
    failures, total = [], time.perf_counter()
    for p in paths:
        ok, seconds, error = run_notebook(p, out, env, args.timeout)
        print(f"{'ok  ' if ok else 'FAIL'} {seconds:7.1f}s  {_rel(p)}{'' if ok else '  ' + error}", flush=True)
        if not ok: failures.append(p)
    print(f"{len(paths) - len(failures)}/{len(paths)} notebooks passed in {time.perf_counter() - total:.1f}s")
    return 1 if failures else 0


if __name__ == '__main__': sys.exit(main())
