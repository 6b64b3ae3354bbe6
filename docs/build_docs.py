"""Build the documentation site offline (no Quarto): `make docs` runs this, and tests/test_docs_site.py.

The site is MkDocs + mkdocs-material + mkdocs-jupyter, built from the same notebooks `nbdev-docs` renders
with Quarto where Quarto exists:

- home page: nbs/index.ipynb, executed;
- library: every library notebook nbs/NN_*.ipynb, executed, in notebook order (nav section "Library"),
  each page linking to its module's API page and back;
- tutorials: nbs/tutorials/*.ipynb, executed in offline mode (FASTMED_OFFLINE=1: synthetic stand-ins);
- API: one page per module fastmed/*.py, generated here from each module's `__all__` with `inspect`
  (signature, docstring, a parameter table whose descriptions are the notebooks' docments) and the prose
  of the notebook cell that precedes each exported object.

The notebooks are saved without outputs, so they are executed here (nbclient, offline, each in its own
folder as nbdev-test does), two at a time, and the executed copies are cached under _site/cache/ keyed
by the hash of the notebook, of the library source and of the executor: a warm build executes nothing.
A page shows a notebook as nbdev's site does (prose, code, outputs and figures; `#| hide` cells left out,
show_doc calls hidden and their output shown), except that the `#| export` cells' code is shown too
(nbdev's `rm_export` leaves it out): readers see the implementation next to its prose. Notebooks close their figures (`plt.close('all')`) to keep `nbdev-test`
light; the executor shows a figure that a cell closes as its output (SHOW_CLOSED_FIGURES), where
Jupyter would have dropped it.
`--only GLOB[,GLOB]` executes only the uncached notebooks that match (the browser test executes a smoke
subset), `--budget SECONDS` caps the execution time: a notebook not executed is rendered without outputs,
with a note saying so. Everything is written under _site/ (git-ignored): _site/src (MkDocs' docs_dir),
_site/html (the site), _site/cache, _site/screenshots (the browser test).
"""
from __future__ import annotations
import argparse, ast, hashlib, html, inspect, json, os, re, shutil, signal, subprocess, sys, time
from pathlib import Path
from fastmed.io import atomic_write

ROOT = Path(__file__).resolve().parents[1]
NBS, LIB, SITE = ROOT/'nbs', ROOT/'fastmed', ROOT/'_site'
SRC, HTML, CACHE = SITE/'src', SITE/'html', SITE/'cache'
MANIFEST = HTML/'build.json'
REPO_URL = 'https://github.com/fastmed/fastmed/blob/main'
DIRECTIVE = re.compile(r'^\s*#\|\s*(.*?)\s*$')
NOT_RUN = ("> **Outputs not shown.** This page was built without running the notebook ({why}); "
           "`make docs` runs it in offline mode and shows its outputs.")
# What the browser test executes: the home page and a small library notebook with a figure (show_batch)
SMOKE_LIBRARY = '05_data.ipynb'
SMOKE = f'index.ipynb,{SMOKE_LIBRARY}'
API_LINK = "> API reference: [`fastmed.{mod}`]({href}), one entry per exported object."
# Run (then removed) before a notebook's first cell: a figure that notebook code closes is displayed first,
# so the page shows it; figures closed by the inline backend itself or by library code are not shown twice.
SHOW_CLOSED_FIGURES = """\
import sys as _sys, matplotlib.pyplot as _plt
from matplotlib._pylab_helpers import Gcf as _Gcf
from matplotlib.figure import Figure as _Figure
from IPython.display import display as _display
def _fastmed_docs_close(fig=None, _close=_plt.close):
    if _sys._getframe(1).f_globals.get('__name__') == '__main__':
        open_figs = [m.canvas.figure for m in _Gcf.get_all_fig_managers()]
        shown = open_figs if fig == 'all' else [_plt.gcf()] if fig is None and open_figs else [fig]
        for f in shown:
            if isinstance(f, _Figure) and f in open_figs and f.axes: _display(f)
    return _close(fig)
_plt.close = _fastmed_docs_close
"""

# ---------------------------------------------------------------- notebooks

def read_nb(path: Path) -> dict: return json.loads(Path(path).read_text(encoding='utf-8'))

def write_atomic(path: Path, text: str):
    "Write `text` to `path` atomically."
    with atomic_write(path) as tmp: Path(tmp).write_text(text, encoding='utf-8')

def cell_source(cell) -> str:
    src = cell.get('source', '')
    return ''.join(src) if isinstance(src, list) else src

def directives(cell) -> dict:
    "nbdev's `#| key: value` cell directives (`#| hide` → {'hide': ''})."
    out = {}
    for line in cell_source(cell).splitlines():
        m = DIRECTIVE.match(line)
        if not m: break
        key, _, val = m.group(1).partition(':' if ':' in m.group(1) else ' ')
        out[key.strip()] = val.strip()
    return out

def nb_title(nb: dict, default: str) -> tuple[str, str]:
    "The notebook's `# Title` and `> summary`."
    for cell in nb['cells']:
        if cell['cell_type'] != 'markdown': continue
        m = re.search(r'^#\s+(.+)$', cell_source(cell), re.M)
        if m:
            s = re.search(r'^>\s*(.+)$', cell_source(cell), re.M)
            return m.group(1).strip(), (s.group(1).strip() if s else '')
    return default, ''

def library_notebooks() -> list[Path]:
    "The library notebooks nbs/NN_*.ipynb, in notebook order."
    return sorted(NBS.glob('[0-9]*.ipynb'))

def page_notebooks() -> list[Path]:
    "Notebooks shown as pages with their outputs: the home page, the library notebooks and the tutorials."
    return [p for p in [NBS/'index.ipynb', *library_notebooks(), *sorted((NBS/'tutorials').glob('*.ipynb'))]
            if p.exists()]

# ---------------------------------------------------------------- execution (cached)

def library_hash() -> str:
    h = hashlib.sha256()
    for p in sorted(LIB.glob('*.py')):
        if p.name != '_modidx.py': h.update(p.name.encode()); h.update(p.read_bytes())
    return h.hexdigest()[:16]

def cache_path(nb: Path, lib_hash: str) -> Path:
    key = hashlib.sha256(nb.read_bytes() + lib_hash.encode() + SHOW_CLOSED_FIGURES.encode()).hexdigest()[:16]
    return CACHE/nb.relative_to(NBS).parent/f'{nb.stem}-{key}.ipynb'

def run_one(src: str, dst: str, cell_timeout: str):
    "Execute notebook `src` in its own folder into `dst`, skipping nbdev's `#| eval: false` and `#| notest` cells."
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(src, as_version=4)
    for cell in nb.cells:
        d = directives(cell)
        if cell.cell_type == 'code' and (d.get('eval') == 'false' or 'notest' in d):
            cell.metadata.setdefault('tags', []).append('skip-execution')
    nb.cells.insert(0, nbformat.v4.new_code_cell(SHOW_CLOSED_FIGURES))
    NotebookClient(nb, timeout=int(cell_timeout), kernel_name='python3',
                   resources={'metadata': {'path': str(Path(src).parent)}}).execute()
    del nb.cells[0]
    for cell in nb.cells:  # numbered as if the setup cell had not run
        if cell.cell_type != 'code': continue
        if cell.execution_count: cell.execution_count -= 1
        for out in cell.outputs:
            if out.get('execution_count'): out['execution_count'] -= 1
    nbformat.write(nb, dst)

def start_execution(nb: Path, part: Path, cell_timeout: int) -> subprocess.Popen:
    "Run `nb` into `part` in a child process, offline, in a new process group (to stop it as a whole)."
    env = {**os.environ, 'FASTMED_OFFLINE': '1', 'PYTHONWARNINGS': 'ignore',
           'JUPYTER_PATH': str(Path(sys.prefix)/'share'/'jupyter')}  # this environment's python3 kernel first
    env.pop('MPLBACKEND', None)  # the kernel's inline backend must capture the figures
    part.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, '--run-one', str(nb), str(part), str(cell_timeout)]
    with open(part.with_suffix('.log'), 'w') as log:  # a file, not a pipe: a long traceback can't block the child
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

def stop(proc: subprocess.Popen):
    "Stop a runner started above (its own process group); its kernel exits when it sees its parent gone."
    try: os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError: pass
    proc.wait()

def execute_all(nbs: list[Path], jobs: int, budget: float | None, cell_timeout: int, only: str = '') -> dict:
    "Executed copy (or the reason there is none) of each notebook: cached ones, then the rest (matching `only`) in parallel."
    lib_hash, status, todo = library_hash(), {}, []
    globs = [g for g in only.split(',') if g]
    for nb in nbs:
        out = cache_path(nb, lib_hash)
        if out.exists(): status[nb] = ('cached', out)
        elif globs and not any(nb.match(g) for g in globs):
            status[nb] = ('not run', f'not cached, and only {", ".join(globs)} executed')
        else: todo.append((nb, out))
    deadline = None if budget is None else time.monotonic() + budget
    running = {}
    while todo or running:
        while todo and len(running) < jobs and (deadline is None or time.monotonic() < deadline):
            nb, out = todo.pop(0)
            part = out.with_name(f'.{out.stem}.part.ipynb')
            running[nb] = (start_execution(nb, part, cell_timeout), part, out, time.monotonic())
            print(f'  executing {nb.relative_to(ROOT)}', flush=True)
        if not running: break
        time.sleep(0.2)
        for nb, (proc, part, out, t0) in list(running.items()):
            late = deadline is not None and time.monotonic() > deadline
            if proc.poll() is None and not late: continue
            if proc.poll() is None: stop(proc)
            if proc.returncode == 0 and part.exists():
                _drop_stale(out); os.replace(part, out); status[nb] = ('executed', out)
                print(f'  executed {nb.relative_to(ROOT)} in {time.monotonic()-t0:.0f} s', flush=True)
            else:
                part.unlink(missing_ok=True)
                log = part.with_suffix('.log')
                why = 'time budget spent' if late else f'execution failed, see {log.relative_to(ROOT)}'
                status[nb] = ('not run', why)
                print(f'  {nb.relative_to(ROOT)}: {why}', flush=True)
            del running[nb]
    for nb, _ in todo: status[nb] = ('not run', 'time budget spent')
    return status

def _drop_stale(out: Path):
    "Remove older cached executions of the same notebook."
    for old in out.parent.glob(out.stem.rsplit('-', 1)[0] + '-*.ipynb'):
        if old != out: old.unlink(missing_ok=True)

# ---------------------------------------------------------------- notebook → page

NB_LINK = re.compile(r'(\]\(|href=["\'])([^)"\'#:]+\.ipynb)(#[^)"\']*)?')

def site_links(md: str, page: Path) -> str:
    "Relative links to notebooks made links to their pages (the site mirrors nbs/: 01_core.ipynb → 01_core.html)."
    def repl(m):
        target = (page.parent/m.group(2)).resolve().with_suffix('.html')
        return m.group(1) + os.path.relpath(target, page.parent) + (m.group(3) or '')
    return NB_LINK.sub(repl, md)

CODE_SPAN = re.compile(r'`([^`\n]+)`')

def heading_code_html(md: str) -> str:
    """Code spans in headings written as `<code>` HTML, so that the TOC links reach the headings.

    mkdocs-jupyter builds a notebook's TOC from its markdown with every backtick span removed, while the
    heading's id (nbconvert) keeps the span's text: "## `MedImage` and `MedMask`" got the TOC link #and and
    the id medimage-and-medmask. With `<code>` both sides slugify the same text. Fenced code is left alone."""
    out, fence = [], None
    for line in md.split('\n'):
        m = re.match(r'\s*(`{3,}|~{3,})', line)
        if m and (fence is None or m.group(1).startswith(fence)): fence = None if fence else m.group(1)
        elif fence is None and re.match(r'#{1,6}\s', line):
            line = CODE_SPAN.sub(lambda c: f'<code>{html.escape(c.group(1), quote=False)}</code>', line)
        out.append(line)
    return '\n'.join(out)

ATTR_LINK = re.compile(r'\[([^\]\n]+)\]\(([^)\s]+)\)\{((?:\s*[\w-]+="[^"]*")+)\s*\}')

def attr_links(md: str) -> str:
    "Quarto's `[text](url){key=\"value\"}` links (show_doc's source link) as HTML links with those attributes."
    return ATTR_LINK.sub(lambda m: f'<a href="{html.escape(m.group(2))}" {m.group(3).strip()}>{m.group(1)}</a>', md)

def markdown_outputs(outputs: list) -> list:
    "`outputs` with their markdown (show_doc's) made renderable here: see `attr_links`."
    def fix(o):
        md = o.get('data', {}).get('text/markdown')
        if md is None: return o
        return {**o, 'data': {**o['data'], 'text/markdown': attr_links(''.join(md) if isinstance(md, list) else md)}}
    return [fix(o) for o in outputs]

def page_cells(nb: dict, note: str | None, page: Path) -> dict:
    "`nb` as a page: nbdev directives honoured (hide, echo, output) and removed from the code shown; `note` after the title."
    cells = []
    for cell in nb['cells']:
        d = directives(cell)
        if 'hide' in d or 'default_exp' in d or d.get('include') == 'false': continue
        if cell['cell_type'] == 'markdown': cell = {**cell, 'source': heading_code_html(site_links(cell_source(cell), page))}
        if cell['cell_type'] == 'code':
            lines = cell_source(cell).splitlines()
            while lines and DIRECTIVE.match(lines[0]): lines.pop(0)
            cell = {**cell, 'source': '\n'.join(lines)}
            if d.get('echo') == 'false' or re.search(r'^show_doc', cell['source'], re.M):  # nbdev hides show_doc calls too
                cell['metadata'] = {**cell.get('metadata', {}), 'tags': ['hide-input']}
            cell['outputs'] = [] if d.get('output') == 'false' else markdown_outputs(cell.get('outputs', []))
        cells.append(cell)
    if note:
        first = next((i for i, c in enumerate(cells) if c['cell_type'] == 'markdown'), -1)
        cells.insert(first + 1, {'cell_type': 'markdown', 'id': 'fastmed-docs-note', 'metadata': {}, 'source': note})
    return {**nb, 'cells': cells}

def write_notebook_pages(status: dict) -> dict:
    "Write each page notebook into the docs folder (a library notebook with a link to its API page); its nav title."
    titles, mods = {}, {nb: mod for mod, nb in module_notebooks() if nb}
    for nb, (state, val) in status.items():
        data = read_nb(val if state != 'not run' else nb)
        notes = [API_LINK.format(mod=mods[nb], href=os.path.relpath(NBS/'api'/f'{mods[nb]}.html', nb.parent))] if nb in mods else []
        if state == 'not run': notes.append(NOT_RUN.format(why=val))
        write_atomic(SRC/nb.relative_to(NBS), json.dumps(page_cells(data, '\n\n'.join(notes) or None, nb)))
        titles[nb] = nb_title(data, nb.stem)[0].replace('`', '')
    return titles

# ---------------------------------------------------------------- API pages

def module_notebooks() -> list[tuple[str, Path | None]]:
    "(module, source notebook) for each fastmed module, in notebook order."
    mods = []
    for py in LIB.glob('*.py'):
        if py.name in ('_modidx.py', '__init__.py'): continue
        m = re.search(r'File to edit: \.\./nbs/(\S+\.ipynb)', py.read_text(encoding='utf-8'))
        mods.append((py.stem, NBS/m.group(1) if m else None))
    return sorted(mods, key=lambda o: (o[1] is None, o[1].name if o[1] else o[0]))

def _anno(a) -> str: return a if isinstance(a, str) else getattr(a, '__name__', str(a))

def _param(p: inspect.Parameter) -> str:
    "`name: type = default` as written in the source (annotations are strings under `from __future__`)."
    text = {p.VAR_POSITIONAL: '*', p.VAR_KEYWORD: '**'}.get(p.kind, '') + p.name
    if p.annotation is not p.empty: text += f': {_anno(p.annotation)}'
    if p.default is not p.empty: text += (' = ' if p.annotation is not p.empty else '=') + repr(p.default)
    return text

def fmt_signature(name: str, obj) -> str:
    "`name(params) -> return`, one parameter a line when it is long."
    try: sig = inspect.signature(obj)
    except (TypeError, ValueError): return f'{name}(...)'
    params = [_param(p) for p in sig.parameters.values() if p.name not in ('self', 'cls')]
    ret = '' if sig.return_annotation is sig.empty else f' -> {_anno(sig.return_annotation)}'
    one_line = f'{name}({", ".join(params)}){ret}'
    if len(one_line) <= 80: return one_line
    return f'{name}(\n' + ''.join(f'    {p},\n' for p in params) + f'){ret}'

def _cell_md(text: str) -> str: return text.replace('|', '\\|').replace('\n', ' ')

def params_table(obj) -> str:
    "Markdown table of `obj`'s parameters: type, default and the docment of each."
    from fastcore.docments import docments
    try: sig, docs = inspect.signature(obj), docments(obj, full=True)
    except Exception: return ''
    rows = []
    for p in sig.parameters.values():
        if p.name in ('self', 'cls'): continue
        kind = {p.VAR_POSITIONAL: '*', p.VAR_KEYWORD: '**'}.get(p.kind, '')
        anno = '' if p.annotation is p.empty else f'`{_anno(p.annotation)}`'
        default = '' if p.default is p.empty else f'`{p.default!r}`'
        doc = (docs.get(p.name) or {}).get('docment') or ''
        rows.append(f'| `{kind}{p.name}` | {_cell_md(anno)} | {_cell_md(default)} | {_cell_md(doc)} |')
    ret = (docs.get('return') or {}).get('docment')
    if ret: rows.append(f'| **returns** | | | {_cell_md(ret)} |')
    if not rows: return ''
    return '| Parameter | Type | Default | Description |\n|---|---|---|---|\n' + '\n'.join(rows) + '\n'

def notebook_prose(nb_path: Path | None, names: set[str]) -> tuple[str, dict]:
    "The notebook's introduction and, for each exported name, the markdown just before the cell defining it."
    if nb_path is None or not nb_path.exists(): return '', {}
    intro, pending, prose, seen_export = [], [], {}, False
    for cell in read_nb(nb_path)['cells'][1:]:
        src = cell_source(cell)
        if cell['cell_type'] == 'markdown':
            (pending if seen_export else intro).append(src); continue
        if 'export' not in directives(cell) and 'exports' not in directives(cell):
            if seen_export: pending = []
            continue
        seen_export = True
        defined = [n for n in _defined_names(src) if n in names and n not in prose]
        if defined: prose[defined[0]], pending = '\n\n'.join(pending), []
    return '\n\n'.join(intro), prose

def _defined_names(src: str) -> list[str]:
    try: tree = ast.parse('\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!'))))
    except SyntaxError: return []
    out = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): out.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                out += [n.id for n in ast.walk(t) if isinstance(n, ast.Name)]
    return out

def member_markdown(cls) -> str:
    "Public methods and properties defined by `cls` itself."
    out = []
    for name, attr in vars(cls).items():
        if name.startswith('_'): continue
        fn = attr.__func__ if isinstance(attr, (classmethod, staticmethod)) else attr
        if isinstance(attr, property):
            out.append(f'#### `{cls.__name__}.{name}` *(property)*\n\n{inspect.getdoc(attr) or ""}\n')
        elif inspect.isfunction(fn):
            out.append(f'#### `{cls.__name__}.{name}`\n\n```python\n{fmt_signature(name, fn)}\n```\n\n'
                       f'{inspect.getdoc(fn) or ""}\n\n{params_table(fn)}')
    return '\n'.join(out)

def symbol_markdown(name: str, obj, prose: str) -> str:
    "One exported object: heading, signature, docstring, parameter table, notebook prose, members."
    if inspect.isclass(obj) or callable(obj) and not isinstance(obj, (tuple, dict)):
        kind = 'class' if inspect.isclass(obj) else 'function'
        init = obj.__init__ if inspect.isclass(obj) and '__init__' in vars(obj) else obj
        parts = [f'## `{name}` {{#{name}}}', prose, f'<small>{kind}</small>',
                 f'```python\n{fmt_signature(name, init if inspect.isclass(obj) else obj)}\n```',
                 inspect.getdoc(obj) or '', params_table(init)]
        if inspect.isclass(obj): parts.append(member_markdown(obj))
    else:
        r = repr(obj)
        parts = [f'## `{name}` {{#{name}}}', prose, '<small>constant</small>',
                 f'```python\n{name} = {r[:300] + " …" if len(r) > 300 else r}\n```']
    return '\n\n'.join(p for p in parts if p) + '\n'

def module_markdown(mod: str, nb_path: Path | None) -> tuple[str, str, str]:
    "(title, summary, markdown) of the API page of `fastmed.<mod>`."
    import importlib
    m = importlib.import_module(f'fastmed.{mod}')
    title, summary = nb_title(read_nb(nb_path), mod) if nb_path else (mod, '')
    summary = summary or (inspect.getdoc(m) or '').split('\n')[0]
    own = [n for n in getattr(m, '__all__', []) if getattr(getattr(m, n, None), '__module__', m.__name__) == m.__name__]
    intro, prose = notebook_prose(nb_path, set(own))
    src = f'[{nb_path.relative_to(ROOT)}]({REPO_URL}/{nb_path.relative_to(ROOT)})' if nb_path else ''
    page = f' · [the notebook, executed](../{nb_path.relative_to(NBS).as_posix()})' if nb_path in library_notebooks() else ''
    head = [f'# {title}', f'`fastmed.{mod}`' + page + (f' · source {src}' if src else ''), f'> {summary}', intro]
    if not own:
        imports = [l for l in (LIB/f'{mod}.py').read_text().splitlines() if re.match(r'(from|import) \S', l)]
        head.append('This module defines no objects of its own; it gathers:\n\n```python\n' + '\n'.join(imports) + '\n```')
    body = [symbol_markdown(n, getattr(m, n), prose.get(n, '')) for n in own]
    return title, summary, '\n\n'.join(p for p in head + body if p)

def write_api_pages() -> list[tuple[str, str]]:
    "Write api/<module>.md and api/index.md; their nav entries."
    nav, rows = [], []
    for mod, nb_path in module_notebooks():
        title, summary, md = module_markdown(mod, nb_path)
        write_atomic(SRC/'api'/f'{mod}.md', md)
        nav.append({f'{mod} — {title}': f'api/{mod}.md'})
        rows.append(f'| [`fastmed.{mod}`]({mod}.md) | {_cell_md(title)} | {_cell_md(summary)} |')
    write_atomic(SRC/'api'/'index.md', '# API reference\n\nOne page per module, generated from its `__all__`: '
                 'signature, docstring, parameters (the notebooks\' docments) and the notebook\'s prose.\n\n'
                 '| Module | Title | Summary |\n|---|---|---|\n' + '\n'.join(rows) + '\n')
    return [{'Overview': 'api/index.md'}, *nav]

# ---------------------------------------------------------------- site

def sources_key() -> str:
    "Hash of everything the site is built from: notebooks, library, this script, mkdocs.yml."
    files = sorted(NBS.rglob('*.ipynb')) + [ROOT/'mkdocs.yml', Path(__file__).resolve()]
    h = hashlib.sha256(library_hash().encode())
    for p in files:
        if not any(part.startswith('.') for part in p.relative_to(ROOT).parts): h.update(p.read_bytes())
    return h.hexdigest()[:16]

def build_site(nav: list):
    "Render _site/src into _site/html with MkDocs (config: mkdocs.yml, nav from here)."
    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    os.chdir(ROOT)
    cfg = load_config(str(ROOT/'mkdocs.yml'), nav=nav)
    build(cfg)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--jobs', type=int, default=2, help='notebooks executed at once')
    ap.add_argument('--budget', type=float, default=None, help='seconds for executing notebooks (default: no cap)')
    ap.add_argument('--cell-timeout', type=int, default=900, help='seconds one cell may run')
    ap.add_argument('--no-execute', action='store_true', help='render notebooks without running them')
    ap.add_argument('--only', default='', help='execute only the uncached notebooks matching these comma-separated globs')
    ap.add_argument('--strict', action='store_true', help='exit non-zero if a notebook fails to execute (the site is built all the same)')
    ap.add_argument('--run-one', nargs=3, metavar=('SRC', 'DST', 'CELL_TIMEOUT'), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run_one: return run_one(*args.run_one)
    t0 = time.monotonic()
    MANIFEST.unlink(missing_ok=True)  # written last: its presence marks a complete build
    shutil.rmtree(SRC, ignore_errors=True)
    nbs = page_notebooks()
    print(f'docs: {len(nbs)} notebooks to show with outputs', flush=True)
    status = ({nb: ('not run', 'built with --no-execute') for nb in nbs} if args.no_execute
              else execute_all(nbs, args.jobs, args.budget, args.cell_timeout, args.only))
    t_exec = time.monotonic() - t0
    titles = write_notebook_pages(status)
    api_nav = write_api_pages()
    tutorials = [{titles[nb]: str(nb.relative_to(NBS))} for nb in nbs if nb.parent.name == 'tutorials']
    library = [{titles[nb]: nb.name} for nb in nbs if nb in library_notebooks()]
    nav = [{'Home': 'index.ipynb'}, *([{'Tutorials': tutorials}] if tutorials else []),
           *([{'Library': library}] if library else []), {'API': api_nav}]
    build_site(nav)
    manifest = {'sources': sources_key(), 'notebooks': {str(nb.relative_to(NBS)): status[nb][0] for nb in nbs},
                'execute_s': round(t_exec, 1), 'total_s': round(time.monotonic() - t0, 1)}
    write_atomic(MANIFEST, json.dumps(manifest, indent=1))
    print(f'docs: site in {HTML.relative_to(ROOT)}/ ({manifest["total_s"]} s, executing {manifest["execute_s"]} s)')
    failed = [str(nb.relative_to(ROOT)) for nb, (s, why) in status.items() if why and str(why).startswith('execution failed')]
    if args.strict and failed: sys.exit(f'docs: built, but these notebooks failed to execute (shown without outputs): {", ".join(failed)}')
    return manifest

if __name__ == '__main__': main()
