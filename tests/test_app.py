"""`fastmed app` in a real browser: the Gradio page of a small saved model (test_dicomseg's two-label blob model) is
served on a free 127.0.0.1 port, headless Chromium (Debian's, driven by Selenium as in test_docs_site.py) uploads a
zipped DICOM series and a NIfTI file, waits for the result, reads the volume table and compares it with
`label_volumes` on the same prediction, checks the three overlaid planes and the download buttons, saves
screenshots (_site/screenshots/app_*.png), then uploads bad files and reads their one-line messages. The app has a
correction network (a fixed one that paints a ball around a positive click), so a click on a plane corrects the mask.
"""
import os, socket, zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from torch import nn

from test_dicomseg import GEOMETRIES, SHAPE, blob_model, blob_series, blob_volume
from test_docs_site import CHROME_FLAGS, _chromium
from fastmed.app import app_predict, launch_app, plane_voxel
from fastmed.core import MedMask
from fastmed.dicomseg import read_dicom_seg
from fastmed.export import load_model
from fastmed.inference import predict_volume
from fastmed.io import write_nifti
from fastmed.postprocess import label_volumes

SHOTS = Path(__file__).resolve().parents[1] / '_site' / 'screenshots'


class BallPainter(nn.Module):
    "Logit = 20 * (mask + 2*positive - 2*negative - 0.5) from the mask and guidance channels (a test fixture, not a model)."
    def __init__(self): super().__init__(); self.w = nn.Parameter(torch.ones(()))
    def forward(self, x): return 20 * (x[:, 1:2] + 2 * x[:, 2:3] - 2 * x[:, 3:4] - 0.5) * self.w


def _free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _zip(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, 'w') as z:
        for f in sorted(folder.iterdir()): z.write(f, f'{folder.name}/{f.name}')
    return target


@pytest.fixture(scope='module')
def app(tmp_path_factory) -> dict:
    "The app of the blob model, served on a free loopback port: {'url', 'model', 'files': uploads by name}."
    d = tmp_path_factory.mktemp('app')
    model = load_model(blob_model(d))
    series = blob_series(d / 'oblique_series', GEOMETRIES['oblique'])
    aff = GEOMETRIES['sagittal']
    files = {'series': series, 'zip': _zip(series, d / 'oblique_series.zip'),
             'nifti': write_nifti(d / 'sagittal.nii.gz', blob_volume(aff)[None], aff),
             'text': d / 'notes.txt', 'flat': write_nifti(d / 'flat.nii.gz', blob_volume(aff)[None, :, :, :1], aff),
             'channels': write_nifti(d / 'two_channels.nii.gz', np.stack([blob_volume(aff)] * 2), aff)}
    files['text'].write_text('not an image')
    gap = blob_series(d / 'gap_series', GEOMETRIES['axial']); (gap / '0007.dcm').unlink()
    files['gap'] = _zip(gap, d / 'gap_series.zip')
    port = _free_port()
    page = launch_app(model, port=port, max_upload_mb=1, block=False, work_dir=d / 'work',  # 1 MB: the uploads here are ~40 kB
                      correction_model=BallPainter())
    (d / 'downloads').mkdir()
    yield {'url': f'http://127.0.0.1:{port}/', 'model': model, 'files': files, 'port': port, 'downloads': d / 'downloads'}
    page.close()


@pytest.fixture(scope='module')
def browser(app):
    found = _chromium()
    if isinstance(found, str): pytest.skip(f'no Chromium: {found}')
    webdriver = pytest.importorskip('selenium.webdriver')
    os.environ.setdefault('SE_OFFLINE', 'true')
    opts = webdriver.ChromeOptions(); opts.binary_location = found[0]
    for flag in CHROME_FLAGS: opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=found[1]))
    driver.set_page_load_timeout(60)
    driver.execute_cdp_cmd('Browser.setDownloadBehavior', {'behavior': 'allow', 'downloadPath': str(app['downloads'])})
    yield driver
    driver.quit()


def _upload(browser, app, path: Path, expect: str) -> str:
    "Load the page, upload `path`, wait until the status line starts with `expect`; the status line."
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    browser.get(app['url'])
    WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, '#upload input[type=file]'))
    browser.find_element(By.CSS_SELECTOR, '#upload input[type=file]').send_keys(str(path))
    status = lambda b: b.find_element(By.CSS_SELECTOR, '#status textarea').get_attribute('value')
    WebDriverWait(browser, 120).until(lambda b: status(b).startswith(('predicted', 'error')))
    assert status(browser).startswith(expect), status(browser)
    return status(browser)


def _table(browser) -> dict:
    "{label: mL} read from the page's volume table."
    from selenium.webdriver.common.by import By
    rows = browser.find_elements(By.CSS_SELECTOR, '#fastmed-volumes tbody tr')
    return {int(r.find_elements(By.TAG_NAME, 'td')[0].text): float(r.find_elements(By.TAG_NAME, 'td')[2].text) for r in rows}


def _shot(browser, name: str):
    browser.set_window_size(1280, min(max(browser.execute_script('return document.body.scrollHeight'), 900), 4000))
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SHOTS / f'{name}.png'))
    assert (SHOTS / f'{name}.png').stat().st_size > 20_000, 'the screenshot is blank'


def test_binds_loopback_only(app):
    assert requests.get(app['url'], timeout=10).ok
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # the address this host would send from (UDP: nothing is sent)
        try: s.connect(('10.255.255.255', 1)); ip = s.getsockname()[0]
        except OSError: ip = '127.0.0.1'
    if ip.startswith('127.'): pytest.skip('the host has no other address to try')
    with pytest.raises(requests.ConnectionError): requests.get(f"http://{ip}:{app['port']}/", timeout=5)


def test_upload_size_limit(app):
    "Gradio refuses an upload above --max-upload-mb before storing it."
    big = requests.post(f"{app['url']}gradio_api/upload", files={'files': ('big.nii.gz', b'x' * (2 * 2**20))}, timeout=30)
    small = requests.post(f"{app['url']}gradio_api/upload", files={'files': ('small.nii.gz', b'x' * 1000)}, timeout=30)
    assert (big.status_code, small.status_code) == (413, 200), (big.status_code, big.text[:200], small.status_code)


def test_dicom_zip_upload(browser, app):
    from selenium.webdriver.common.by import By
    _upload(browser, app, app['files']['zip'], 'predicted oblique_series.zip')
    expected = {k: round(v, 3) for k, v in label_volumes(predict_volume(app['model'], app['files']['series'])).items()}
    assert set(expected) == {1, 2} and min(expected.values()) > 0.1, expected
    assert _table(browser) == expected
    for plane in ('sagittal', 'coronal', 'axial'):
        img = browser.find_element(By.CSS_SELECTOR, f'#plane-{plane} img')
        assert img.get_attribute('naturalWidth') not in (None, '0') and int(img.get_attribute('naturalHeight')) == 320, plane
    for button in ('download-nifti', 'download-seg'): assert browser.find_element(By.ID, button).is_displayed(), button
    _shot(browser, 'app_dicom')
    mask = predict_volume(app['model'], app['files']['series'])[0].numpy()
    nifti = _download(browser, 'download-nifti', '_pred.nii.gz', app['downloads'])
    assert np.array_equal(MedMask.create(nifti)[0].numpy(), mask)                      # the file the button gives
    seg = _download(browser, 'download-seg', '_seg.dcm', app['downloads'])
    assert np.array_equal(read_dicom_seg(seg, app['files']['series']), mask)
    _move_slider(browser, 'axial', 0)                     # the lowest axial slice: below the ball, no colour left
    assert _colour_pixels(browser, 'axial') == 0
    _move_slider(browser, 'axial', 7)
    assert _colour_pixels(browser, 'axial') > 1000


def _download(browser, button: str, suffix: str, folder: Path) -> Path:
    "Click a download button; the file it saved into `folder`."
    import time
    from selenium.webdriver.common.by import By
    browser.find_element(By.ID, button).click()
    for _ in range(120):
        done = [p for p in folder.iterdir() if p.name.endswith(suffix)]
        if done: return done[0]
        time.sleep(0.5)
    raise AssertionError(f'{button}: no *{suffix} downloaded into {folder}: {list(folder.iterdir())}')


def _plane_pixels(browser, plane: str) -> np.ndarray:
    "The RGB pixels of a plane's picture as the page shows it (fetched from its src)."
    import io as _io
    from PIL import Image
    from selenium.webdriver.common.by import By
    src = browser.find_element(By.CSS_SELECTOR, f'#plane-{plane} img').get_attribute('src')
    return np.asarray(Image.open(_io.BytesIO(requests.get(src, timeout=10).content)).convert('RGB')).astype(int)


def _colour_pixels(browser, plane: str) -> int:
    "How many pixels of a plane are not grey (i.e. show the mask)."
    px = _plane_pixels(browser, plane)
    return int(((px.max(-1) - px.min(-1)) > 10).sum())


def _move_slider(browser, plane: str, value: int):
    "Type `value` into a plane's slider box and wait for the picture to change."
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    src = lambda: browser.find_element(By.CSS_SELECTOR, f'#plane-{plane} img').get_attribute('src')
    before = src()
    box = browser.find_element(By.CSS_SELECTOR, f'#slider-{plane} input[type=number]')
    box.send_keys(Keys.CONTROL, 'a'); box.send_keys(str(value), Keys.ENTER)
    WebDriverWait(browser, 60).until(lambda b: src() != before)


def _click_pixel(browser, plane: str, x: int, y: int):
    "Click pixel (x, y) of a plane's picture (natural pixels), as the mouse would."
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    img = browser.find_element(By.CSS_SELECTOR, f'#plane-{plane} img')
    browser.execute_script('arguments[0].scrollIntoView({block: "center"})', img)
    w, h, nw, nh = browser.execute_script('const r = arguments[0].getBoundingClientRect(); '
                                          'return [r.width, r.height, arguments[0].naturalWidth, arguments[0].naturalHeight]', img)
    r = min(w / nw, h / nh, 1)  # Gradio's own pixel arithmetic: the picture is fitted inside the element, centred
    dx, dy = (w - nw * r) / 2 + (x + 0.5) * r - w / 2, (h - nh * r) / 2 + (y + 0.5) * r - h / 2
    ActionChains(browser).move_to_element_with_offset(img, round(dx), round(dy)).click().perform()


def test_click_corrects_mask(browser, app, tmp_path):
    "A positive click on a grey spot of the axial plane paints label 1 there: the picture and the volume table change."
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    _upload(browser, app, app['files']['nifti'], 'predicted sagittal.nii.gz')
    table, px = _table(browser), _plane_pixels(browser, 'axial')
    x, y = 40, 40
    grey = (px.max(-1) - px.min(-1)) <= 10
    assert grey[y - 15:y + 15, x - 15:x + 15].all()                      # far from the blob
    _click_pixel(browser, 'axial', x, y)
    status = lambda b: b.find_element(By.CSS_SELECTOR, '#status textarea').get_attribute('value')
    WebDriverWait(browser, 60).until(lambda b: status(b).startswith(('positive click', 'error', 'no correction')))
    state = app_predict(app['model'], app['files']['nifti'], tmp_path)
    near = {plane_voxel(state, 2, (None,) * 3, (x + a, y + b)) for a in (-1, 0, 1) for b in (-1, 0, 1)}
    assert any(status(browser).startswith(f'positive click on voxel {v} (label 1): ') for v in near), (status(browser), near)
    after = _plane_pixels(browser, 'axial')
    assert after[y, x].max() - after[y, x].min() > 10, after[y, x]      # the clicked spot now shows label 1's colour
    assert _colour_pixels(browser, 'axial') > int((~grey).sum()) + 100
    new = _table(browser)
    assert new[1] > table[1] + 0.01 and new[2] == table[2], (table, new)
    _shot(browser, 'app_click')


def test_nifti_upload(browser, app):
    from selenium.webdriver.common.by import By
    _upload(browser, app, app['files']['nifti'], 'predicted sagittal.nii.gz')
    expected = {k: round(v, 3) for k, v in label_volumes(predict_volume(app['model'], app['files']['nifti'])).items()}
    assert _table(browser) == expected
    assert browser.find_element(By.ID, 'download-nifti').is_displayed()
    assert not browser.find_elements(By.CSS_SELECTOR, '#download-seg') or not browser.find_element(By.ID, 'download-seg').is_displayed()
    _shot(browser, 'app_nifti')


@pytest.mark.parametrize('name, words', [('text', "'notes.txt': is not an image"), ('gap', 'missing slice'),
                                         ('channels', 'has 2 channels'), ('flat', 'flat.nii.gz')])
def test_bad_upload_message(browser, app, name, words):
    from selenium.webdriver.common.by import By
    status = _upload(browser, app, app['files'][name], 'error: ')
    assert words in status and '\n' not in status, status
    assert not browser.find_elements(By.CSS_SELECTOR, '#fastmed-volumes')
    if name == 'gap': _shot(browser, 'app_bad_upload')


def test_fastmed_app_command(tmp_path):
    "`fastmed app MODEL --port P` (the console entry point) serves the page on 127.0.0.1 until stopped."
    import subprocess, sys, time
    model, port = blob_model(tmp_path), _free_port()
    proc = subprocess.Popen([sys.executable, '-m', 'fastmed.cli', 'app', str(model), '--port', str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(240):
            assert proc.poll() is None, proc.stdout.read()[-2000:]
            try:
                if requests.get(f'http://127.0.0.1:{port}/', timeout=2).ok: break
            except requests.ConnectionError: time.sleep(0.5)
        else: pytest.fail('fastmed app did not answer within 2 minutes')
        assert 'fastmed' in requests.get(f'http://127.0.0.1:{port}/config', timeout=10).text
    finally:
        proc.terminate(); out = proc.communicate(timeout=30)[0]
    assert f'fastmed app: http://127.0.0.1:{port}/' in out, out[-2000:]
    missing = subprocess.run([sys.executable, '-m', 'fastmed.cli', 'app', str(tmp_path / 'nope.json')], capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.count('\n') == 1 and 'nope.json' in missing.stderr, missing.stderr
    bad = subprocess.run([sys.executable, '-m', 'fastmed.cli', 'app', str(model), '--correction-model', str(tmp_path / 'nope.safetensors')],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count('\n') == 1 and 'nope.safetensors' in bad.stderr, bad.stderr
