"""Real-data downloaders, tested offline: tiny archives in the real formats served from 127.0.0.1.

The server honours HTTP Range (or not, on request), counts requests, and can break off the first N responses
halfway, so resume, restart, checksum and skip-on-second-call behaviour are checked through the same code
path a real download takes. Nothing leaves the machine.
"""
import gzip
import io
import json
import re
import socket
import stat
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from fastmed.external import (RESOURCES, Resource, download_decathlon_task, download_ixi_data, download_ixi_tiny,
                              download_medmnist3d_dataset, download_NoduleMNIST3D, download_url, file_digest,
                              mirror_registry, safe_extract)
from fastmed.io import MedicalInputError


# ---------------------------------------------------------------- local server
def make_handler(folder, log, ranges=True, break_first=0):
    "A handler serving `folder` that logs (path, Range header, status), honours Range if `ranges`, and cuts the first `break_first` bodies in half."
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            f = folder/self.path.split('?')[0].lstrip('/')
            asked = self.headers.get('Range')
            if not f.is_file():
                log.append((self.path, asked, 404)); self.send_error(404); return
            data, start = f.read_bytes(), 0
            if asked and ranges:
                start = int(re.fullmatch(r'bytes=(\d+)-', asked)[1])
                if start >= len(data):
                    log.append((self.path, asked, 416))
                    self.send_response(416); self.send_header('Content-Range', f'bytes */{len(data)}')
                    self.send_header('Content-Length', '0'); self.end_headers(); return
                self.send_response(206); self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
            else: self.send_response(200)
            body = data[start:]
            log.append((self.path, asked, 206 if start else 200))
            self.send_header('Content-Length', str(len(body))); self.end_headers()
            cut = len(log) <= break_first
            self.wfile.write(body[:len(body) // 2] if cut else body)
            self.wfile.flush()
            if cut: self.close_connection = True

        def log_message(self, fmt, *args): pass
    return Handler


@pytest.fixture
def serve(tmp_path):
    "Start servers of tmp_path/'site' with the given options; yields a starter returning (base URL, request log)."
    servers = []
    site = tmp_path/'site'
    site.mkdir()
    def start(ranges=True, break_first=0):
        log = []
        srv = ThreadingHTTPServer(('127.0.0.1', 0), make_handler(site, log, ranges, break_first))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f'http://127.0.0.1:{srv.server_address[1]}', log
    yield start
    for srv in servers: srv.shutdown(); srv.server_close()


def closed_port():
    "A 127.0.0.1 port nothing listens on."
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- archives in the real formats
def gz_nifti(arr):
    "Bytes of `arr` as a gzipped NIfTI file (1 mm, identity affine)."
    return gzip.compress(nib.Nifti1Image(arr, np.eye(4)).to_bytes())


def add(tf, name, data=b'', **kw):
    "Add member `name` with `data` (or a link/device given by TarInfo fields in `kw`) to the open tar `tf`."
    ti = tarfile.TarInfo(name)
    for k, v in kw.items(): setattr(ti, k, v)
    ti.size = len(data) if ti.isreg() else 0
    tf.addfile(ti, io.BytesIO(data) if ti.size else None)


def medmnist_npz(fn, edge=28, counts=(3, 2, 2), n_classes=2, seed=0):
    "Write a MedMNIST-3D-like npz (the real keys, uint8 cubes, (N, 1) labels) and return its arrays."
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(('train', 'val', 'test'), counts):
        arrays[f'{split}_images'] = rng.integers(0, 256, (n, edge, edge, edge), dtype=np.uint8)
        arrays[f'{split}_labels'] = (np.arange(n) % n_classes).astype(np.uint8)[:, None]
    np.savez_compressed(fn, **arrays)
    return arrays


def ixi_tiny_zip(fn, subjects):
    "Write an IXI-Tiny-like zip: ixi_tiny/image/<sid>_image.nii.gz and ixi_tiny/label/<sid>_label.nii.gz."
    with zipfile.ZipFile(fn, 'w') as zf:
        for i, sid in enumerate(subjects):
            zf.writestr(f'ixi_tiny/image/{sid}_image.nii.gz', gz_nifti(np.full((5, 6, 4), i, np.float32)))
            zf.writestr(f'ixi_tiny/label/{sid}_label.nii.gz', gz_nifti(np.eye(5, 6, dtype=np.uint8)[..., None].repeat(4, -1)))


def decathlon_tar(fn, task, train_ids=(1, 3), test_ids=(2,), mode='w'):
    "Write a Decathlon-like tar: task/dataset.json, imagesTr, labelsTr, imagesTs (and a stray macOS ._ file)."
    meta = {'name': task, 'labels': {'0': 'background', '1': 'organ'}, 'modality': {'0': 'CT'},
            'training': [{'image': f'./imagesTr/case_{i:03d}.nii.gz', 'label': f'./labelsTr/case_{i:03d}.nii.gz'} for i in train_ids],
            'test': [f'./imagesTs/case_{i:03d}.nii.gz' for i in test_ids]}
    with tarfile.open(fn, mode) as tf:
        add(tf, f'{task}/dataset.json', json.dumps(meta).encode())
        for i in train_ids:
            add(tf, f'{task}/imagesTr/case_{i:03d}.nii.gz', gz_nifti(np.full((4, 4, 3), i, np.int16)))
            add(tf, f'{task}/labelsTr/case_{i:03d}.nii.gz', gz_nifti(np.ones((4, 4, 3), np.uint8)))
        for i in test_ids: add(tf, f'{task}/imagesTs/case_{i:03d}.nii.gz', gz_nifti(np.zeros((4, 4, 3), np.int16)))
        add(tf, f'{task}/imagesTr/._case_001.nii.gz', b'\0\5\x16\7')


def one_line(e):
    "The message of MedicalInputError `e`, checked to be one line with no chained urllib traceback."
    msg = str(e.value)
    assert '\n' not in msg and e.value.__cause__ is None
    assert e.value.__context__ is None or e.value.__suppress_context__
    return msg


# ---------------------------------------------------------------- download_url
def test_registry_is_immutable_and_complete():
    assert {'nodulemnist3d', 'organmnist3d_64', 'ixi_tiny', 'ixi_t1', 'ixi_demographics', 'Task01_BrainTumour',
            'Task02_Heart', 'Task04_Hippocampus', 'Task09_Spleen'} <= set(RESOURCES)
    with pytest.raises(TypeError): RESOURCES['nodulemnist3d'] = None
    with pytest.raises(AttributeError): RESOURCES['ixi_tiny'].url = 'http://elsewhere'
    assert RESOURCES['ixi_tiny'].md5 == 'bfb60f4074283d78622760230bfa1f98'
    assert 'no checksum' in RESOURCES['ixi_demographics'].note and RESOURCES['ixi_demographics'].md5 is None


def test_download_skips_verified_file(tmp_path, serve):
    base, log = serve()
    data = bytes(range(256)) * 1000
    (tmp_path/'site'/'f.bin').write_bytes(data)
    md5 = file_digest(tmp_path/'site'/'f.bin')
    dest = download_url(f'{base}/f.bin', tmp_path/'out'/'f.bin', md5=md5, size=len(data), progress=False)
    assert dest.read_bytes() == data and len(log) == 1
    download_url(f'{base}/f.bin', dest, md5=md5, progress=False)
    assert len(log) == 1
    assert sorted(p.name for p in dest.parent.iterdir()) == ['f.bin']  # no .part left


def test_checksum_mismatch_leaves_nothing(tmp_path, serve):
    base, log = serve()
    (tmp_path/'site'/'f.bin').write_bytes(b'abc' * 1000)
    good = file_digest(tmp_path/'site'/'f.bin')
    with pytest.raises(MedicalInputError) as e:
        download_url(f'{base}/f.bin', tmp_path/'out'/'f.bin', md5='f' * 32, progress=False)
    msg = one_line(e)
    assert f'{base}/f.bin' in msg and str(tmp_path/'out'/'f.bin') in msg and good in msg and 'f' * 32 in msg
    assert list((tmp_path/'out').iterdir()) == []


def test_broken_transfer_resumes_with_range(tmp_path, serve):
    base, log = serve(break_first=1)
    data = np.random.default_rng(0).integers(0, 256, 200_001, dtype=np.uint8).tobytes()
    (tmp_path/'site'/'f.bin').write_bytes(data)
    dest = download_url(f'{base}/f.bin', tmp_path/'f.bin', md5=file_digest(tmp_path/'site'/'f.bin'), progress=False)
    assert dest.read_bytes() == data
    assert [(r, s) for _, r, s in log] == [(None, 200), ('bytes=100000-', 206)]


def test_server_without_range_restarts_from_zero(tmp_path, serve):
    base, log = serve(ranges=False, break_first=1)
    data = np.random.default_rng(1).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    (tmp_path/'site'/'f.bin').write_bytes(data)
    dest = download_url(f'{base}/f.bin', tmp_path/'f.bin', md5=file_digest(tmp_path/'site'/'f.bin'), progress=False)
    assert dest.read_bytes() == data
    assert [(r, s) for _, r, s in log] == [(None, 200), ('bytes=50000-', 200)]  # Range ignored: whole file again


def test_partial_file_from_earlier_session(tmp_path, serve):
    base, log = serve()
    data = np.random.default_rng(2).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    (tmp_path/'site'/'f.bin').write_bytes(data)
    md5 = file_digest(tmp_path/'site'/'f.bin')
    (tmp_path/'a.bin.part').write_bytes(data[:30_000])  # a good prefix: resumed
    assert download_url(f'{base}/f.bin', tmp_path/'a.bin', md5=md5, progress=False).read_bytes() == data
    assert [r for _, r, _ in log] == ['bytes=30000-']
    (tmp_path/'b.bin.part').write_bytes(b'\0' * 30_000)  # a corrupt prefix: resumed, fails the MD5, fetched again
    assert download_url(f'{base}/f.bin', tmp_path/'b.bin', md5=md5, progress=False).read_bytes() == data
    assert [r for _, r, _ in log[1:]] == ['bytes=30000-', None]
    (tmp_path/'c.bin.part').write_bytes(data + b'junk')  # longer than the file: 416, fetched again
    assert download_url(f'{base}/f.bin', tmp_path/'c.bin', md5=md5, progress=False).read_bytes() == data
    assert [s for _, _, s in log[3:]] == [416, 200]
    assert not list(tmp_path.glob('*.part'))


def test_unreachable_host_one_line(tmp_path):
    url = f'http://127.0.0.1:{closed_port()}/nodulemnist3d.npz'
    with pytest.raises(MedicalInputError) as e: download_url(url, tmp_path/'x.npz', progress=False)
    assert one_line(e).startswith(f"'{url}': cannot be reached")
    assert not list(tmp_path.iterdir())


def test_missing_file_names_http_status(tmp_path, serve):
    base, _ = serve()
    with pytest.raises(MedicalInputError, match=r"nope\.bin': the server answered HTTP 404"):
        download_url(f'{base}/nope.bin', tmp_path/'nope.bin', progress=False)


# ---------------------------------------------------------------- safe_extract
def _tar_with(tmp_path, name, **kw):
    fn = tmp_path/f'evil_{len(list(tmp_path.iterdir()))}.tar.gz'
    with tarfile.open(fn, 'w:gz') as tf: add(tf, 'fine.txt', b'ok'); add(tf, name, b'x', **kw)
    return fn


def _zip_with(tmp_path, name, link_target=None):
    fn = tmp_path/f'evil_{len(list(tmp_path.iterdir()))}.zip'
    with zipfile.ZipFile(fn, 'w') as zf:
        zf.writestr('fine.txt', 'ok')
        info = zipfile.ZipInfo(name)
        if link_target: info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, link_target or 'x')
    return fn


@pytest.mark.parametrize('make, expected', [
    (lambda t: _tar_with(t, '/etc/evil'), "member '/etc/evil' has an absolute path"),
    (lambda t: _tar_with(t, 'a/../../evil'), "member 'a/../../evil' has a '..' component"),
    (lambda t: _tar_with(t, 'ln', type=tarfile.SYMTYPE, linkname='../../home'), "member 'ln' is a symlink to '../../home'"),
    (lambda t: _tar_with(t, 'ln', type=tarfile.SYMTYPE, linkname='/etc/passwd'), "is a symlink to '/etc/passwd'"),
    (lambda t: _tar_with(t, 'hl', type=tarfile.LNKTYPE, linkname='../outside'), "member 'hl' is a hardlink to '../outside'"),
    (lambda t: _tar_with(t, 'sda', type=tarfile.BLKTYPE), "member 'sda' is a block device"),
    (lambda t: _zip_with(t, '/etc/evil'), "member '/etc/evil' has an absolute path"),
    (lambda t: _zip_with(t, '../evil'), "member '../evil' has a '..' component"),
    (lambda t: _zip_with(t, 'ln', '../../home/x'), "member 'ln' is a symlink to '../../home/x'"),
])
def test_malicious_members_refused(tmp_path, make, expected):
    src = tmp_path/'src'; src.mkdir()
    archive = make(src)
    with pytest.raises(MedicalInputError) as e: safe_extract(archive, tmp_path/'data'/'out')
    msg = one_line(e)
    assert expected in msg and str(archive) in msg and 'nothing was extracted' in msg
    assert not (tmp_path/'data').exists() or not list((tmp_path/'data').iterdir())


def test_safe_extract_atomic_and_skips(tmp_path):
    fn = tmp_path/'Task09_Spleen.tar.gz'
    decathlon_tar(fn, 'Task09_Spleen', mode='w:gz')
    dest = safe_extract(fn, tmp_path/'data'/'Task09_Spleen', subdir='Task09_Spleen')
    assert (dest/'dataset.json').is_file() and (dest/'imagesTr'/'case_001.nii.gz').is_file()
    assert sorted(p.name for p in (tmp_path/'data').iterdir()) == ['Task09_Spleen']  # no temp folder left
    fn.unlink()
    assert safe_extract(fn, dest, subdir='Task09_Spleen') == dest  # marker: done, archive not needed
    (tmp_path/'other').mkdir(); (tmp_path/'other'/'mine.txt').write_text('x')
    with pytest.raises(MedicalInputError, match='holds no finished extraction'): safe_extract(fn, tmp_path/'other')


# ---------------------------------------------------------------- datasets
def test_nodulemnist3d_happy_path_and_second_call(tmp_path, serve):
    base, log = serve()
    arrays = medmnist_npz(tmp_path/'site'/'nodulemnist3d.npz')
    reg = mirror_registry(base, checksums_from=tmp_path/'site')
    df, test_df = download_NoduleMNIST3D(tmp_path/'data', max_workers=2, registry=reg, progress=False)
    assert list(df.columns) == ['img_path', 'labels', 'is_val'] and list(test_df.columns) == ['img_path', 'labels']
    assert df.labels.tolist() == ['b', 'm', 'b', 'b', 'm'] and test_df.labels.tolist() == ['b', 'm']
    assert df.is_val.tolist() == [False, False, False, True, True] and df.is_val.dtype == bool
    for paths, imgs in ((df.img_path[:3], arrays['train_images']), (df.img_path[3:], arrays['val_images']),
                        (test_df.img_path, arrays['test_images'])):
        for p, expected in zip(paths, imgs):
            img = nib.load(p)
            assert Path(p).is_absolute() and img.shape == (28, 28, 28) and np.allclose(img.affine, np.eye(4))
            assert img.get_data_dtype() == np.uint8 and np.array_equal(np.asanyarray(img.dataobj), expected)
    assert len(log) == 1
    df2, test_df2 = download_NoduleMNIST3D(tmp_path/'data', registry=reg, progress=False)
    assert len(log) == 1 and df2.equals(df) and test_df2.equals(test_df)


def test_other_medmnist_study_64(tmp_path, serve):
    base, log = serve()
    arrays = medmnist_npz(tmp_path/'site'/'organmnist3d_64.npz', edge=64, counts=(2, 1, 1), n_classes=11)
    arrays['train_labels'][1] = 10
    np.savez_compressed(tmp_path/'site'/'organmnist3d_64.npz', **arrays)
    reg = mirror_registry(base, checksums_from=tmp_path/'site')
    df, test_df = download_medmnist3d_dataset('organmnist3d', tmp_path/'data', size=64, registry=reg, progress=False)
    assert df.labels.tolist() == ['0', '10', '0'] and test_df.labels.tolist() == ['0']
    assert Path(df.img_path[0]).parent == (tmp_path/'data'/'OrganMNIST3D_64'/'train').resolve()
    assert nib.load(df.img_path[2]).shape == (64, 64, 64)


def test_checksum_mismatch_in_dataset(tmp_path, serve):
    base, _ = serve()
    medmnist_npz(tmp_path/'site'/'nodulemnist3d.npz')
    reg = mirror_registry(base)  # the real MedMNIST MD5 cannot match the stand-in file
    with pytest.raises(MedicalInputError) as e: download_NoduleMNIST3D(tmp_path/'data', registry=reg, progress=False)
    assert RESOURCES['nodulemnist3d'].md5 in one_line(e) and 'nodulemnist3d.npz' in str(e.value)
    assert not list((tmp_path/'data'/'NoduleMNIST3D').iterdir())


def test_dataset_offline_error(tmp_path):
    reg = mirror_registry(f'http://127.0.0.1:{closed_port()}/mirror')
    for call in (lambda: download_NoduleMNIST3D(tmp_path, registry=reg, progress=False),
                 lambda: download_ixi_tiny(tmp_path, registry=reg, progress=False),
                 lambda: download_decathlon_task('Task09_Spleen', tmp_path, registry=reg, progress=False)):
        with pytest.raises(MedicalInputError) as e: call()
        assert re.match(r"'http://127\.0\.0\.1:\d+/mirror/\S+': cannot be reached", one_line(e))


def test_ixi_tiny(tmp_path, serve):
    base, log = serve(break_first=1)  # and the first transfer breaks off: resumed
    sids = ['IXI002-Guys-0828', 'IXI012-HH-1211', 'IXI013-HH-1212']
    ixi_tiny_zip(tmp_path/'site'/'ixi_tiny.zip', sids)
    reg = mirror_registry(base, checksums_from=tmp_path/'site')
    study = download_ixi_tiny(tmp_path/'data', registry=reg, progress=False)
    assert study == (tmp_path/'data'/'IXITiny').resolve() and (study/'image').is_dir() and (study/'label').is_dir()
    df = pd.read_csv(study/'dataset.csv')
    assert list(df.columns) == ['subject_id', 't1_path', 'labels'] and df.subject_id.tolist() == sids
    assert all(Path(t).name == f'{s}_image.nii.gz' and Path(l).name == f'{s}_label.nii.gz'
               for s, t, l in zip(df.subject_id, df.t1_path, df.labels))
    assert nib.load(df.t1_path[2]).get_fdata().max() == 2
    assert not (tmp_path/'data'/'ixi_tiny.zip').exists() and [s for *_, s in log] == [200, 206]
    assert download_ixi_tiny(tmp_path/'data', registry=reg, progress=False) == study and len(log) == 2


def test_ixi_data_with_csv_demographics(tmp_path, serve):
    base, log = serve()
    with tarfile.open(tmp_path/'site'/'IXI-T1.tar', 'w') as tf:
        for sid in ('IXI002-Guys-0828', 'IXI012-HH-1211', 'IXI013-HH-1212', 'IXI014-HH-1236'):
            add(tf, f'{sid}-T1.nii.gz', gz_nifti(np.zeros((3, 3, 3), np.int16)))
    demo = pd.DataFrame({'IXI_ID': [2, 12, 13, 13, 14, 15], 'SEX_ID (1=m, 2=f)': [2, 1, 1, 1, 2, 1],
                         'AGE': [35.8, 38.78, 46.7, 47.1, np.nan, 30.0]})  # 13: two ages, 14: none, 15: no scan
    demo.to_csv(tmp_path/'site'/'IXI.csv', index=False)
    reg = mirror_registry(base, checksums_from=tmp_path/'site')
    reg = {**reg, 'ixi_demographics': Resource(f'{base}/IXI.csv', 'IXI.csv', md5=file_digest(tmp_path/'site'/'IXI.csv'))}
    df = download_ixi_data(tmp_path/'data', registry=reg, progress=False)
    assert list(df.columns) == ['subject_id', 't1_path', 'age', 'sex']
    assert df.subject_id.tolist() == ['IXI002', 'IXI012'] and df.age.tolist() == [35.8, 38.78] and df.sex.tolist() == ['F', 'M']
    assert Path(df.t1_path[1]) == (tmp_path/'data'/'IXI'/'T1'/'IXI012-HH-1211-T1.nii.gz').resolve()
    assert len(log) == 2 and download_ixi_data(tmp_path/'data', registry=reg, progress=False).equals(df) and len(log) == 2


def test_ixi_xls_needs_xlrd_or_reads(tmp_path):
    from fastmed.external import _read_demographics
    (tmp_path/'IXI.xls').write_bytes(b'\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1' + b'\0' * 504)  # OLE2 signature, no workbook
    try: import xlrd  # noqa: F401
    except ImportError: expected = 'needs the xlrd package'
    else: expected = 'cannot be read as a spreadsheet'
    with pytest.raises(MedicalInputError, match=expected): _read_demographics(tmp_path/'IXI.xls')


def test_decathlon_task(tmp_path, serve):
    base, log = serve()
    decathlon_tar(tmp_path/'site'/'Task09_Spleen.tar', 'Task09_Spleen', train_ids=(1, 3, 5), test_ids=(2, 4))
    reg = mirror_registry(base, checksums_from=tmp_path/'site')
    df, test_df = download_decathlon_task('Task09_Spleen', tmp_path/'data', registry=reg, progress=False, keep_archive=True)
    task = (tmp_path/'data'/'Task09_Spleen').resolve()
    assert list(df.columns) == ['image', 'label'] and list(test_df.columns) == ['image']
    assert df.image.tolist() == [str(task/'imagesTr'/f'case_{i:03d}.nii.gz') for i in (1, 3, 5)]
    assert df.label.tolist() == [str(task/'labelsTr'/f'case_{i:03d}.nii.gz') for i in (1, 3, 5)]
    assert test_df.image.tolist() == [str(task/'imagesTs'/f'case_{i:03d}.nii.gz') for i in (2, 4)]
    assert nib.load(df.image[1]).get_fdata().max() == 3 and df.attrs['labels'] == {'0': 'background', '1': 'organ'}
    assert (tmp_path/'data'/'Task09_Spleen.tar').is_file()  # keep_archive
    df2, _ = download_decathlon_task('Task09_Spleen', tmp_path/'data', registry=reg, progress=False)
    assert df2.equals(df) and len(log) == 1


def test_decathlon_refuses_malicious_tar(tmp_path, serve):
    base, _ = serve()
    with tarfile.open(tmp_path/'site'/'Task02_Heart.tar', 'w') as tf:
        add(tf, 'Task02_Heart/dataset.json', b'{}'); add(tf, 'Task02_Heart/../../evil.sh', b'rm -rf ~')
    reg = mirror_registry(base, checksums_from=tmp_path/'site')
    with pytest.raises(MedicalInputError, match=r"member 'Task02_Heart/\.\./\.\./evil\.sh' has a '\.\.' component"):
        download_decathlon_task('Task02_Heart', tmp_path/'data', registry=reg, progress=False)
    assert not (tmp_path/'data'/'Task02_Heart').exists() and not (tmp_path/'evil.sh').exists()
