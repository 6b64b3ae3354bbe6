"""`fastmed pacs predict` against a real Orthanc: the fixture installs Debian's `orthanc` and `orthanc-dicomweb` when
missing (apt-get, as root), starts Orthanc on a free 127.0.0.1 port with a temporary storage folder, a generated
config (DICOMweb plugin on, DICOM port off, remote access off) and authentication with a generated user and
password, and stops it afterwards. Series are generated with pydicom (test_dicomseg's blob series, three geometries),
uploaded over Orthanc's REST API, predicted by the command, and the SEGs read back from Orthanc are compared voxel
for voxel with the local native-space prediction. Also: credentials refused or missing, a server that is down, an
unknown study, a study with no usable series, a study where one series is skipped.
"""
import contextlib, io, os, secrets, shutil, socket, subprocess, tempfile, time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from test_dicomseg import GEOMETRIES, blob_model, blob_series
from fastmed.dicomseg import read_dicom_seg, write_dicom_seg
from fastmed.export import load_model
from fastmed.inference import predict_volume
from fastmed.cli import main
from fastmed.pacs import pacs_client

PLUGIN = Path('/usr/share/orthanc/plugins/libOrthancDicomWeb.so')


def _orthanc() -> str:
    "The Orthanc binary, installing Debian's packages when root (or passwordless sudo) and apt work; else why not (a skip reason)."
    found = lambda: shutil.which('Orthanc') if PLUGIN.exists() else None
    if found(): return found()
    sudo = [] if os.geteuid() == 0 else ['sudo', '-n'] if shutil.which('sudo') else None  # CI runners: passwordless sudo
    if sudo is None or not shutil.which('apt-get'): return 'Orthanc is not installed and apt-get is not usable'
    env = {**os.environ, 'DEBIAN_FRONTEND': 'noninteractive'}
    for cmd in ([*sudo, 'apt-get', 'update', '-qq'], [*sudo, 'apt-get', 'install', '-y', '-qq', 'orthanc', 'orthanc-dicomweb']):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if r.returncode: return f'`{" ".join(cmd)}` failed: {(r.stderr.strip().splitlines() or ["?"])[-1]}'
    return found() or 'apt-get installed no Orthanc with its DICOMweb plugin'


def _free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _config(folder: Path, port: int, user: str, password: str) -> Path:
    cfg = {'Name': 'fastmed-test', 'StorageDirectory': str(folder / 'db'), 'IndexDirectory': str(folder / 'db'),
           'HttpPort': port, 'DicomServerEnabled': False, 'RemoteAccessAllowed': False,
           'AuthenticationEnabled': True, 'RegisteredUsers': {user: password},
           'Plugins': [str(PLUGIN)], 'DicomWeb': {'Enable': True, 'Root': '/dicom-web/'}}
    path = folder / 'orthanc.json'; path.write_text(__import__('json').dumps(cfg)); return path


@pytest.fixture(scope='module')
def orthanc(tmp_path_factory):
    "A running Orthanc: {'rest', 'dicomweb', 'auth'}; stopped (and its storage removed) after the module."
    binary = _orthanc()
    if not Path(binary).is_absolute(): pytest.skip(f'no Orthanc: {binary}')
    folder, port = tmp_path_factory.mktemp('orthanc'), _free_port()
    auth = (f'fastmed-{secrets.token_hex(4)}', secrets.token_urlsafe(16))
    log = open(folder / 'orthanc.log', 'w')
    proc = subprocess.Popen([binary, str(_config(folder, port, *auth))], stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    rest = f'http://127.0.0.1:{port}'
    for _ in range(120):
        with contextlib.suppress(requests.ConnectionError):
            if requests.get(f'{rest}/system', auth=auth, timeout=2).ok: break
        assert proc.poll() is None, (folder / 'orthanc.log').read_text()[-2000:]
        time.sleep(0.25)
    else: pytest.fail('Orthanc did not start within 30 s')
    yield {'rest': rest, 'dicomweb': f'{rest}/dicom-web', 'auth': auth}
    proc.terminate(); proc.wait(timeout=30); log.close()


def upload(orthanc, folder: Path):
    "Upload every file of `folder` to Orthanc through its REST API."
    for f in sorted(folder.iterdir()):
        r = requests.post(f"{orthanc['rest']}/instances", data=f.read_bytes(), auth=orthanc['auth'], timeout=30)
        assert r.ok, r.text


def segs_in(orthanc, study: str) -> list:
    "The SEG instances Orthanc holds for `study`, retrieved over DICOMweb."
    client = pacs_client(orthanc['dicomweb'], orthanc['auth'])
    series = client.search_for_series(study, search_filters={'Modality': 'SEG'})
    return [ds for s in series for ds in client.retrieve_series(study, pydicom.Dataset.from_json(s).SeriesInstanceUID)]


def run_pacs(*argv) -> tuple:
    "`fastmed pacs ARGV` through the CLI's entry point, in this process: (status, stdout, stderr)."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): status = main(['pacs', *map(str, argv)])
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope='module')
def model(tmp_path_factory) -> Path: return blob_model(tmp_path_factory.mktemp('model'))


@pytest.fixture(scope='module')
def study(orthanc, tmp_path_factory) -> dict:
    "A study of three series (axial, sagittal, oblique) on Orthanc: {'uid', 'series': {series UID: local folder}}."
    d, uid = tmp_path_factory.mktemp('study'), generate_uid()
    folders = {name: blob_series(d / name, aff, study_uid=uid, patient_id='P-ROUNDTRIP') for name, aff in GEOMETRIES.items()}
    for f in folders.values(): upload(orthanc, f)
    return {'uid': uid, 'series': {pydicom.dcmread(next(f.iterdir())).SeriesInstanceUID: f for f in folders.values()}}


def test_round_trip_three_geometries(orthanc, model, study, monkeypatch):
    monkeypatch.setenv('FASTMED_PACS_USER', orthanc['auth'][0]); monkeypatch.setenv('FASTMED_PACS_PASSWORD', orthanc['auth'][1])
    status, out, err = run_pacs('predict', model, '--server', orthanc['dicomweb'], '--study', study['uid'])
    assert (status, err) == (0, ''), err
    assert out.count('stored DICOM-SEG') == 3, out
    segs = segs_in(orthanc, study['uid'])
    assert len(segs) == 3
    net = load_model(model)
    for seg in segs:
        source = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
        folder = study['series'][source]
        mask = predict_volume(net, folder)[0].numpy()
        back = read_dicom_seg(seg, folder)
        assert np.array_equal(back, mask), folder.name                      # voxel for voxel, from the server
        assert np.bincount(back.ravel(), minlength=3)[1:].min() > 20, folder.name
        src = pydicom.dcmread(next(folder.iterdir()))
        assert (seg.FrameOfReferenceUID, seg.PatientID) == (src.FrameOfReferenceUID, 'P-ROUNDTRIP')
        assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == 'blob'


def _count_segs(orthanc) -> int:
    r = requests.post(f"{orthanc['rest']}/tools/find", json={'Level': 'Series', 'Query': {'Modality': 'SEG'}},
                      auth=orthanc['auth'], timeout=10)
    return len(r.json())


def test_credentials_refused_or_missing(orthanc, model, study, tmp_path, monkeypatch):
    for k in ('FASTMED_PACS_USER', 'FASTMED_PACS_PASSWORD'): monkeypatch.delenv(k, raising=False)
    before = _count_segs(orthanc)
    status, out, err = run_pacs('predict', model, '--server', orthanc['dicomweb'], '--study', study['uid'])
    assert status == 2 and err.count('\n') == 1, err
    assert f"'{orthanc['dicomweb']}': refused the credentials (HTTP 401)" in err, err
    (tmp_path / 'pw').write_text('wrong-password\n')
    status, out, err = run_pacs('predict', model, '--server', orthanc['dicomweb'], '--study', study['uid'],
                                '--user', orthanc['auth'][0], '--password-file', tmp_path / 'pw')
    assert status == 2 and 'refused the credentials (HTTP 401)' in err, err
    status, out, err = run_pacs('predict', model, '--server', orthanc['dicomweb'], '--study', study['uid'], '--user', 'x')
    assert status == 2 and "'credentials': a user was given without a password" in err, err
    assert _count_segs(orthanc) == before                                    # nothing stored
    (tmp_path / 'pw').write_text(orthanc['auth'][1] + '\n')                  # the right one, from a file
    series = next(iter(study['series']))
    status, out, err = run_pacs('predict', model, '--server', orthanc['dicomweb'], '--study', study['uid'],
                                '--series', series, '--user', orthanc['auth'][0], '--password-file', tmp_path / 'pw')
    assert status == 0 and out.count('stored DICOM-SEG') == 1 and series in out, err
    assert _count_segs(orthanc) == before + 1


def test_server_down(model, monkeypatch):
    monkeypatch.setenv('FASTMED_PACS_USER', 'u'); monkeypatch.setenv('FASTMED_PACS_PASSWORD', 'p')
    left = set(Path(tempfile.gettempdir()).glob('fastmed-pacs-*'))
    url = f'http://127.0.0.1:{_free_port()}/dicom-web'
    t0 = time.monotonic()
    status, out, err = run_pacs('predict', model, '--server', url, '--study', '1.2.3', '--timeout', '5')
    assert (status, out, err.count('\n')) == (2, '', 1), err
    assert time.monotonic() - t0 < 15                                        # a few quick retries, then the answer
    assert err.startswith(f"fastmed: error: '{url}': cannot be reached (searching study 1.2.3)"), err
    assert set(Path(tempfile.gettempdir()).glob('fastmed-pacs-*')) == left


def test_unusable_studies(orthanc, model, tmp_path, monkeypatch):
    monkeypatch.setenv('FASTMED_PACS_USER', orthanc['auth'][0]); monkeypatch.setenv('FASTMED_PACS_PASSWORD', orthanc['auth'][1])
    args = ('predict', model, '--server', orthanc['dicomweb'], '--study')
    status, out, err = run_pacs(*args, '1.2.826.0.1.999')
    assert status == 2 and "'1.2.826.0.1.999': no such study on the server" in err, err
    # a study holding only a SEG (its source series never sent)
    uid = generate_uid(); src = blob_series(tmp_path / 'local', GEOMETRIES['axial'], study_uid=uid)
    write_dicom_seg(predict_volume(load_model(model), src), src, tmp_path / 'only_seg' / 'seg.dcm')
    upload(orthanc, tmp_path / 'only_seg')
    status, out, err = run_pacs(*args, uid)
    assert status == 2 and err.count('\n') == 1 and f"'{uid}': holds no image series (1 series of modality SEG)" in err, err
    # a study whose only image series misses a slice
    uid = generate_uid(); gap = blob_series(tmp_path / 'gap', GEOMETRIES['oblique'], study_uid=uid)
    (gap / '0005.dcm').unlink(); upload(orthanc, gap)
    status, out, err = run_pacs(*args, uid)
    assert status == 2 and f"'{uid}': no series could be predicted:" in err and 'missing slice' in err, err
    assert segs_in(orthanc, uid) == []
    # one good series beside it: that one is stored, the other skipped and named (status 1)
    good = blob_series(tmp_path / 'good', GEOMETRIES['sagittal'], study_uid=uid); upload(orthanc, good)
    status, out, err = run_pacs(*args, uid)
    gap_uid = pydicom.dcmread(next(gap.iterdir())).SeriesInstanceUID
    assert status == 1 and f'skipped series {gap_uid}: ' in err and 'missing slice' in err, err
    (seg,) = segs_in(orthanc, uid)
    assert np.array_equal(read_dicom_seg(seg, good), predict_volume(load_model(model), good)[0].numpy())
