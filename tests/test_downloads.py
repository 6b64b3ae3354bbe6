"""Real-data downloaders, tested offline: tiny archives in the real formats served from 127.0.0.1.

The server honours HTTP Range (or not, on request), counts requests, and can break off the first N responses
halfway, so resume, restart, checksum and skip-on-second-call behaviour are checked through the same code
path a real download takes. Nothing leaves the machine.
"""
import gzip
import io
import json
import re
import shutil
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

from fastmed.external import (RESOURCES, Resource, data_folder, download_decathlon_task, download_ixi_data, download_ixi_tiny,
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


# ---------------------------------------------------------------- copies already on this machine (issue 11)
def offline(site):
    "A registry on a closed port, re-checksummed from the stand-ins in `site`: any request fails, copies verify."
    return mirror_registry(f'http://127.0.0.1:{closed_port()}/mirror', checksums_from=site)


def test_checksum_arguments_checked_before_the_network(tmp_path, serve):
    base, log = serve()
    (tmp_path/'site'/'f.bin').write_bytes(b'abc' * 1000)
    md5 = file_digest(tmp_path/'site'/'f.bin')
    dest = download_url(f'{base}/f.bin', tmp_path/'f.bin', md5=md5.upper(), progress=False)  # upper case: same digest
    assert dest.read_bytes() == b'abc' * 1000 and len(log) == 1
    for kw, culprit in ((dict(md5=md5[:-1]), 'md5='), (dict(md5=md5 + '0'), 'md5='), (dict(sha256=md5), 'sha256='), (dict(size=-3), 'size=-3')):
        with pytest.raises(MedicalInputError) as e: download_url(f'{base}/f.bin', dest, progress=False, **kw)
        assert one_line(e).startswith(culprit)
    assert dest.read_bytes() == b'abc' * 1000 and len(log) == 1  # the good download is kept, no request made


def test_medmnist_local_copies_without_network(tmp_path):
    site = tmp_path/'site'; site.mkdir()
    arrays = medmnist_npz(site/'adrenalmnist3d.npz', counts=(4, 2, 3))
    medmnist_npz(site/'adrenalmnist3d_64.npz', edge=64, counts=(1, 1, 1))
    reg, root = offline(site), tmp_path/'medmnist3d'
    shutil.copytree(site, root)  # the way MedMNIST's package keeps its files: root/adrenalmnist3d.npz
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    df, test_df = download_medmnist3d_dataset('AdrenalMNIST3D', root, max_workers=2, registry=reg, progress=False)
    assert df.labels.tolist() == ['0', '1', '0', '1', '0', '1'] and df.is_val.sum() == 2 and len(test_df) == 3
    assert np.array_equal(np.asanyarray(nib.load(test_df.img_path[2]).dataobj), arrays['test_images'][2])
    assert Path(df.img_path[0]).parent == (root/'AdrenalMNIST3D'/'train').resolve()
    assert {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()} == before  # the copies are untouched, still there
    df64, _ = download_medmnist3d_dataset('adrenalmnist3d', tmp_path/'a', size=64, registry=reg, local=root)  # a folder holding it
    assert nib.load(df64.img_path[0]).shape == (64, 64, 64)
    shutil.copy(root/'adrenalmnist3d.npz', tmp_path/'renamed.npz')
    df2, _ = download_medmnist3d_dataset('AdrenalMNIST3D', tmp_path/'b', registry=reg, local=tmp_path/'renamed.npz')
    assert len(df2) == 6 and (tmp_path/'renamed.npz').is_file() and not (tmp_path/'b'/'AdrenalMNIST3D'/'adrenalmnist3d.npz').exists()


def test_data_folder_from_environment(tmp_path, monkeypatch):
    site = tmp_path/'site'; site.mkdir()
    medmnist_npz(site/'nodulemnist3d.npz')
    monkeypatch.setenv('FASTMED_DATA', str(site))
    df, _ = download_NoduleMNIST3D(registry=offline(site), max_workers=1, progress=False)  # no path: $FASTMED_DATA
    assert Path(df.img_path[0]).parent == (site/'NoduleMNIST3D'/'train').resolve()
    assert data_folder(tmp_path/'x') == tmp_path/'x'
    monkeypatch.delenv('FASTMED_DATA')
    assert data_folder() == Path('../data')


def test_ixi_tiny_local_zip_and_extracted_folders(tmp_path):
    site = tmp_path/'site'; site.mkdir()
    sids = ['IXI002-Guys-0828', 'IXI012-HH-1211']
    ixi_tiny_zip(site/'ixi_tiny.zip', sids)
    reg = offline(site)
    study = download_ixi_tiny(tmp_path/'a', registry=reg, local=site/'ixi_tiny.zip')  # the zip: checked, extracted, kept
    assert study == (tmp_path/'a'/'IXITiny').resolve() and pd.read_csv(study/'dataset.csv').subject_id.tolist() == sids
    assert (site/'ixi_tiny.zip').is_file()
    with zipfile.ZipFile(site/'ixi_tiny.zip') as zf: zf.extractall(tmp_path/'unzipped')  # unzipped by hand: unzipped/ixi_tiny/...
    study = download_ixi_tiny(tmp_path/'b', registry=reg, local=tmp_path/'unzipped')
    assert study == tmp_path/'unzipped'/'ixi_tiny' and not (tmp_path/'b').exists()
    assert pd.read_csv(study/'dataset.csv').t1_path.tolist() == [str(study/'image'/f'{s}_image.nii.gz') for s in sids]
    shutil.copytree(tmp_path/'unzipped'/'ixi_tiny', tmp_path/'c'/'IXITiny')  # extracted by hand where fastmed would put it
    (tmp_path/'c'/'IXITiny'/'dataset.csv').unlink()
    assert download_ixi_tiny(tmp_path/'c', registry=reg) == (tmp_path/'c'/'IXITiny').resolve()
    (tmp_path/'d').mkdir(); shutil.copy(site/'ixi_tiny.zip', tmp_path/'d')  # a zip in the data folder: used, and kept
    download_ixi_tiny(tmp_path/'d', registry=reg)
    assert sorted(p.name for p in (tmp_path/'d').iterdir()) == ['IXITiny', 'ixi_tiny.zip']


def test_ixi_data_local_folder(tmp_path):
    site = tmp_path/'site'; site.mkdir()
    with tarfile.open(site/'IXI-T1.tar', 'w') as tf:
        for sid in ('IXI002-Guys-0828', 'IXI012-HH-1211'): add(tf, f'{sid}-T1.nii.gz', gz_nifti(np.zeros((3, 3, 3), np.int16)))
    pd.DataFrame({'IXI_ID': [2, 12], 'SEX_ID (1=m, 2=f)': [2, 1], 'AGE': [35.8, 38.78]}).to_csv(site/'IXI.csv', index=False)
    reg = {**offline(site), 'ixi_demographics': Resource(f'http://127.0.0.1:{closed_port()}/IXI.csv', 'IXI.csv',
                                                         md5=file_digest(site/'IXI.csv'))}
    df = download_ixi_data(tmp_path/'a', registry=reg, local=site)
    assert df.subject_id.tolist() == ['IXI002', 'IXI012'] and df.age.tolist() == [35.8, 38.78]
    assert Path(df.t1_path[0]).parent == (tmp_path/'a'/'IXI'/'T1').resolve() and (site/'IXI-T1.tar').is_file()
    scans = tmp_path/'scans'; (scans/'T1').mkdir(parents=True); shutil.copy(site/'IXI.csv', scans)
    with tarfile.open(site/'IXI-T1.tar') as tf: tf.extractall(scans/'T1', filter='data')
    df2 = download_ixi_data(tmp_path/'b', registry=reg, local=scans)  # extracted scans in T1/, read in place
    assert df2.age.tolist() == df.age.tolist() and Path(df2.t1_path[1]).parent == scans/'T1'


def course_copy(folder, n=4):
    "A Task04 copy shaped like the course's: no dataset.json, images mixing uint8 (2..140) and float32 (to 2800), one float32 label."
    rng = np.random.default_rng(7)
    for i in range(1, n + 1):
        img = rng.uniform(2, 140, (7, 9, 6)).astype(np.uint8) if i % 3 == 1 else rng.uniform(0, 2800, (7, 9, 6)).astype(np.float32)
        lbl = rng.integers(0, 3, (7, 9, 6)).astype(np.float32 if i == 2 else np.uint8)
        for sub, arr in (('imagesTr', img), ('labelsTr', lbl)):
            (folder/sub).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(arr, np.diag([1., 1., 1., 1.])), folder/sub/f'hippocampus_{2 * i - 1:03d}.nii.gz')
    return folder


def test_decathlon_local_copy_without_dataset_json(tmp_path):
    from fastmed.core import MedImage, MedMask
    course = course_copy(tmp_path/'msd-hippocampus')
    before = {str(p): p.read_bytes() for p in course.rglob('*') if p.is_file()}
    df, test_df = download_decathlon_task('Task04_Hippocampus', tmp_path/'data', registry=offline(tmp_path), local=course)
    assert [Path(p).name for p in df.image] == [f'hippocampus_{i:03d}.nii.gz' for i in (1, 3, 5, 7)]
    assert [Path(p).name for p in df.label] == [Path(p).name for p in df.image] and len(test_df) == 0
    assert df.attrs['task'] == 'Task04_Hippocampus' and not (tmp_path/'data').exists()  # read in place: nothing written
    assert {str(p): p.read_bytes() for p in course.rglob('*') if p.is_file()} == before
    dtypes = [nib.load(p).get_data_dtype() for p in df.image]
    assert dtypes == [np.uint8, np.float32, np.float32, np.uint8]
    for img, lbl in zip(df.image, df.label):
        x, y = MedImage.create(img), MedMask.create(lbl)
        assert x.shape == y.shape == (1, 7, 9, 6) and set(np.unique(y.numpy())) <= {0., 1., 2.}
    shutil.copytree(course, tmp_path/'data2'/'Task04_Hippocampus')  # extracted by hand at the destination
    assert download_decathlon_task('Task04_Hippocampus', tmp_path/'data2', registry=offline(tmp_path))[0].label.str.endswith('.nii.gz').all()


def test_nnunet_channels_through_local_copy(tmp_path):
    from fastmed.core import MedImage
    task = tmp_path/'Dataset001_BrainTumour'
    (task/'imagesTr').mkdir(parents=True); (task/'labelsTr').mkdir()
    for case in ('BRATS_001', 'BRATS_002', 'BRATS_003'):
        for c in range(4): nib.save(nib.Nifti1Image(np.full((4, 4, 3), c, np.float32), np.eye(4)), task/'imagesTr'/f'{case}_{c:04d}.nii.gz')
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.uint8), np.eye(4)), task/'labelsTr'/f'{case}.nii.gz')
    (task/'dataset.json').write_text(json.dumps({'channel_names': {'0': 'FLAIR', '1': 'T1w', '2': 'T1gd', '3': 'T2w'},
                                                 'labels': {'background': 0, 'edema': 1}, 'numTraining': 3, 'file_ending': '.nii.gz'}))
    df, _ = download_decathlon_task('Task01_BrainTumour', tmp_path/'data', registry=offline(tmp_path), local=task)
    assert [len(ps) for ps in df.image] == [4, 4, 4] and [Path(p).name for p in df.image[1]][::3] == ['BRATS_002_0000.nii.gz', 'BRATS_002_0003.nii.gz']
    assert MedImage.create(df.image[2])[:, 0, 0, 0].tolist() == [0., 1., 2., 3.]
    assert df.attrs['modality']['2'] == 'T1gd'


def test_decathlon_tar_in_data_folder_used_and_kept(tmp_path):
    site = tmp_path/'site'; site.mkdir()
    decathlon_tar(site/'Task09_Spleen.tar', 'Task09_Spleen')
    (tmp_path/'data').mkdir(); shutil.copy(site/'Task09_Spleen.tar', tmp_path/'data')
    df, test_df = download_decathlon_task('Task09_Spleen', tmp_path/'data', registry=offline(site))
    assert len(df) == 2 and len(test_df) == 1
    assert sorted(p.name for p in (tmp_path/'data').iterdir()) == ['Task09_Spleen', 'Task09_Spleen.tar']
    (tmp_path/'data'/'Task09_Spleen.tar').write_bytes(b'changed')  # the folder is finished: the tar is not looked at again
    assert download_decathlon_task('Task09_Spleen', tmp_path/'data', registry=offline(site))[0].equals(df)
