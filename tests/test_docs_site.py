"""The documentation site in a real browser: build it (or reuse a build of the same sources), serve it on
127.0.0.1, open the home page, a library notebook, an API page and a tutorial in headless Chromium, follow
every internal link.

A fresh build here executes only a smoke subset (build_docs.SMOKE: the home page and 05_data, whose
show_batch figure the library-page test checks; FASTMED_OFFLINE=1). The other notebooks show the outputs of an executed copy
cached by `make docs`, or are rendered without outputs (with a note), so the test stays near a minute and
a half whatever the notebooks cost. Screenshots go to _site/screenshots/.
"""
import functools, http.server, json, os, re, shutil, subprocess, sys, threading, time
from html.parser import HTMLParser
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import urldefrag, urljoin, urlparse
from urllib.request import Request, urlopen

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'docs'))
import build_docs  # noqa: E402

HTML, SHOTS = build_docs.HTML, build_docs.SITE/'screenshots'
CHROME_FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                '--disable-component-update', '--disable-sync', '--no-first-run', '--window-size=1280,1600')


def _chromium() -> tuple[str, str] | str:
    "(chromium, chromedriver) paths, installing Debian's packages when root and apt work; else why not."
    find = lambda: (shutil.which('chromium'), shutil.which('chromedriver'))
    if all(find()): return find()
    if os.geteuid() != 0 or not shutil.which('apt-get'): return 'Chromium is not installed and apt-get is not usable'
    env = {**os.environ, 'DEBIAN_FRONTEND': 'noninteractive'}
    for cmd in (['apt-get', 'update', '-qq'], ['apt-get', 'install', '-y', '-qq', 'chromium', 'chromium-driver']):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if r.returncode: return f'`{" ".join(cmd)}` failed: {(r.stderr.strip().splitlines() or ["?"])[-1]}'
    return find() if all(find()) else 'apt-get installed no chromium/chromedriver'


@pytest.fixture(scope='module')
def site() -> dict:
    "The built site's manifest: reused when built from the same sources, else built now."
    manifest = json.loads(build_docs.MANIFEST.read_text()) if build_docs.MANIFEST.exists() else {}
    smoke_run = all(manifest.get('notebooks', {}).get(nb) in ('executed', 'cached') for nb in build_docs.SMOKE.split(','))
    if manifest.get('sources') != build_docs.sources_key() or not smoke_run:
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, str(ROOT/'docs'/'build_docs.py'), '--only', build_docs.SMOKE,
                            '--budget', '240'], cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        print(f'built the site in {time.monotonic() - t0:.0f} s')
        manifest = json.loads(build_docs.MANIFEST.read_text())
    else: print('reusing the site built from the same sources')
    return manifest


@pytest.fixture(scope='module')
def server(site):
    "http.server on a free 127.0.0.1 port serving the site, in a thread."
    handler = functools.partial(type('Quiet', (http.server.SimpleHTTPRequestHandler,),
                                     {'log_message': lambda *a: None}), directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}/'
    httpd.shutdown(); httpd.server_close()


@pytest.fixture(scope='module')
def browser(server):
    "Headless Chromium driven by chromedriver (Selenium), with its console log."
    found = _chromium()
    if isinstance(found, str): pytest.skip(f'no Chromium: {found}')
    webdriver = pytest.importorskip('selenium.webdriver', reason='selenium is not installed (pip install -e ".[dev]")')
    os.environ.setdefault('SE_OFFLINE', 'true')  # Selenium Manager must not try to download a driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for flag in CHROME_FLAGS: opts.add_argument(flag)
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=found[1]))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _open(browser, url: str, shot: str) -> str:
    "Load `url`, save a full-height screenshot as `shot`.png, return the page's visible text."
    browser.get(url)
    height = browser.execute_script('return document.body.scrollHeight')
    browser.set_window_size(1280, min(max(height, 800), 6000))
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SHOTS/f'{shot}.png'))
    assert (SHOTS/f'{shot}.png').stat().st_size > 20_000, 'the screenshot is blank'
    errors = [e['message'] for e in browser.get_log('browser')
              if e['level'] == 'SEVERE' and '127.0.0.1' in e['message']]
    assert not errors, f'{url}: the browser reports {errors}'
    return browser.find_element('tag name', 'body').text


def test_home_page(browser, server, site):
    text = _open(browser, server + 'index.html', 'home')
    assert browser.find_element('css selector', 'article h1').text == 'fastmed'
    assert 'Two commands' in text and 'A first look' in text
    nav = browser.find_element('css selector', 'nav.md-nav--primary').text
    assert 'API' in nav and 'inference' in nav
    # the home page was executed: the printed shapes and the figure of `ras.show` are there
    assert site['notebooks']['index.ipynb'] in ('executed', 'cached')
    assert re.search(r'\[1, \d+, \d+, \d+\]\) LPS', text), 'no printed output of the first-look cell'
    imgs = browser.find_elements('css selector', '.jp-OutputArea-output img')
    assert any(i.get_attribute('src').startswith('data:image/png') and i.size['width'] > 100 for i in imgs)


def test_library_page(browser, server, site):
    "A library notebook as a page: executed, prose and exported code shown, hidden cells left out, its figure rendered."
    nbs = build_docs.library_notebooks()
    nb = build_docs.NBS/build_docs.SMOKE_LIBRARY
    mod = dict((n, m) for m, n in build_docs.module_notebooks())[nb]
    assert len(nbs) >= 15 and nb in nbs and all(site['notebooks'][n.name] for n in nbs)
    text = _open(browser, server + nb.with_suffix('.html').name, f'library_{mod}')
    assert site['notebooks'][nb.name] in ('executed', 'cached')
    cells = build_docs.read_nb(nb)['cells']
    title, _ = build_docs.nb_title(build_docs.read_nb(nb), nb.stem)
    assert browser.find_element('css selector', 'article h1').text == title.replace('`', '')
    exported = [build_docs.cell_source(c) for c in cells if 'export' in build_docs.directives(c)]
    first_def = next(l for c in exported for l in c.splitlines() if l.startswith(('def ', 'class ')))
    assert first_def.split('(')[0].rstrip(':') in text, 'the #| export cells are shown'
    assert '#|' not in text and 'default_exp' not in text, 'the directives and the #| hide cells are not'
    assert 'show_doc(' not in text, 'show_doc calls are hidden (their outputs shown), as nbdev does'
    assert 'Outputs not shown' not in text
    # the "Library" section of the nav lists every library notebook, in notebook order
    section = browser.find_element('xpath', '//nav[contains(@class, "md-nav--primary")]//li[.//label[normalize-space()="Library"]]')
    hrefs = [a.get_attribute('href').rsplit('/', 1)[-1] for a in section.find_elements('css selector', 'a.md-nav__link')]
    assert [h for h in hrefs if h.endswith('.html')] == [n.with_suffix('.html').name for n in nbs]
    # a figure (show_batch: image + mask overlay): a PNG output, loaded, of real size and not blank
    imgs = browser.find_elements('css selector', '.jp-OutputArea-output img')
    assert imgs, 'no figure among the outputs'
    stats = [browser.execute_script(
        """const i = arguments[0], c = document.createElement('canvas');
           if (!i.complete || !i.naturalWidth) return [i.naturalWidth, i.naturalHeight, 0];
           c.width = i.naturalWidth; c.height = i.naturalHeight;
           const ctx = c.getContext('2d'); ctx.drawImage(i, 0, 0);
           const d = ctx.getImageData(0, 0, c.width, c.height).data, seen = new Set();
           for (let k = 0; k < d.length; k += 4) seen.add(d[k] << 16 | d[k+1] << 8 | d[k+2]);
           return [i.naturalWidth, i.naturalHeight, seen.size];""", i) for i in imgs]
    big = [i for i, (w, h, colours) in zip(imgs, stats) if w >= 300 and h >= 150 and colours >= 16]
    assert big, f'no loaded, non-trivial figure: (naturalWidth, naturalHeight, colours) = {stats}'
    assert big[0].get_attribute('src').startswith('data:image/png') and big[0].size['width'] >= 150
    # the page links to its API page, which links back
    api = browser.find_element('css selector', f'article a[href="api/{mod}.html"]')
    assert f'fastmed.{mod}' in api.text and api.get_attribute('href') == server + f'api/{mod}.html'
    browser.get(api.get_attribute('href'))
    back = browser.find_element('css selector', f'article a[href="../{nb.stem}.html"]')
    assert back.get_attribute('href') == server + f'{nb.stem}.html'
    print(f'{nb.name}: {len(imgs)} figures (naturalWidth, naturalHeight, colours) {stats}')


def test_api_page_inference(browser, server):
    from fastcore.docments import docments
    from fastmed.inference import predict_volume
    text = _open(browser, server + 'api/inference.html', 'api_inference')
    heading = browser.find_element('id', 'predict_volume')
    assert heading.text.startswith('predict_volume')
    section = text[text.index('\npredict_volume('):]
    for name, doc in docments(predict_volume).items():  # every parameter with its docment
        if name == 'return': continue
        assert re.search(rf'\b{name}\b', section[:3000]), name
        if doc: assert ' '.join(doc.split())[:40].replace('`', '') in section.replace('`', ''), doc
    assert 'tta: bool = False' in section, 'the signature shows annotations and defaults'
    assert predict_volume.__doc__.split('`')[0].strip()[:30] in section
    # one page per module, listed on the API overview
    mods = [m for m, _ in build_docs.module_notebooks()]
    assert len(mods) >= 15 and all((HTML/'api'/f'{m}.html').exists() for m in mods)
    overview = _open(browser, server + 'api/index.html', 'api_index')
    assert all(f'fastmed.{m}' in overview for m in mods)


def test_tutorial_page(browser, server, site):
    tutorials = sorted((build_docs.NBS/'tutorials').glob('*.ipynb'))
    if not tutorials: pytest.skip('no tutorial in nbs/tutorials yet')
    nb = tutorials[0]
    title, _ = build_docs.nb_title(build_docs.read_nb(nb), nb.stem)
    text = _open(browser, server + f'tutorials/{nb.stem}.html', 'tutorial')
    assert browser.find_element('css selector', 'article h1').text == title
    assert 'Tutorials' in browser.find_element('css selector', 'nav.md-nav--primary').text
    code = [''.join(c['source']) for c in build_docs.read_nb(nb)['cells'] if c['cell_type'] == 'code']
    first_line = next(l for c in code for l in c.splitlines() if l.strip() and not l.startswith('#|'))
    assert first_line.strip() in text, 'the code cells are shown'
    outputs = browser.find_elements('css selector', '.jp-OutputArea-output')
    if site['notebooks'][f'tutorials/{nb.name}'] in ('executed', 'cached'): assert outputs, 'executed, yet no output'
    else: assert 'Outputs not shown' in text
    print(f'{nb.name}: {site["notebooks"][f"tutorials/{nb.name}"]}, {len(outputs)} outputs')


class _Links(HTMLParser):
    "href/src attributes and element ids of one page."
    def __init__(self):
        super().__init__(); self.links, self.ids = [], set()
    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ('href', 'src') and v: self.links.append(v)
            if k in ('id', 'name') and v: self.ids.add(v)


def _parse(path: Path) -> _Links:
    p = _Links(); p.feed(path.read_text(encoding='utf-8', errors='replace')); return p


def test_no_broken_internal_links(server, site):
    "Every href/src of every built page that stays on the site answers 200, and its #fragment exists."
    pages = {p.relative_to(HTML).as_posix(): _parse(p) for p in HTML.rglob('*.html')}
    checked, broken = set(), []
    for page, parsed in pages.items():
        for link in parsed.links:
            url = urljoin(server + page, link)
            if urlparse(url).netloc != urlparse(server).netloc or urlparse(url).scheme not in ('http', 'https'): continue
            target, frag = urldefrag(url)
            path = urlparse(target).path.lstrip('/') or 'index.html'
            if target not in checked:
                checked.add(target)
                try: urlopen(Request(target, method='HEAD'), timeout=10).close()
                except HTTPError as e: broken.append(f'{page}: {link} → {e.code}')
            if frag and path in pages and frag not in pages[path].ids: broken.append(f'{page}: {link} → no #{frag}')
    assert len(pages) >= 20 and len(checked) >= 20
    assert not broken, f'{len(broken)} broken internal links:\n' + '\n'.join(broken[:30])
    print(f'{len(pages)} pages, {len(checked)} internal URLs, none broken')
