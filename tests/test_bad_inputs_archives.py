"""Bad-input catalogue for archives, downloads and data-set layouts (fastmed.external).

Same row format and assertions as `tests/test_bad_inputs.py`: each row is (id, stage, builder, culprit, problem, error
type); the builder makes the bad input in a temporary folder and returns the call a user would make, optionally with a
check to run afterwards. The test asserts the error type, that the message is ONE line, that it names the culprit and
that it states the problem. Archive rows also check that nothing was written: every file of the sandbox keeps its
bytes, and no file, folder or link appears anywhere in it.

The second half runs crafted archives through the real downloaders, served by the local HTTP server of
`tests/test_downloads.py`, and checks the same: the user's files beside the data folder keep their bytes.
"""
import io
import json
import os
import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_bad_inputs import file_states, assert_user_files_kept

from test_downloads import add, closed_port, decathlon_tar, gz_nifti, medmnist_npz, serve  # noqa: F401 (serve: fixture)
import fastmed.external as ext
from fastmed.external import (data_folder, decathlon_tables, download_decathlon_task, download_ixi_tiny,
                              download_medmnist3d_dataset, download_url, file_digest, mirror_registry, safe_extract)
from fastmed.io import MedicalInputError


# ---------------------------------------------------------------- sandbox bookkeeping
def tree(root):
    "{relative path: bytes, 'dir' or 'link -> target'} for everything under `root`, links not followed."
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = Path(dirpath)/n
            rel = str(p.relative_to(root))
            out[rel] = f'link -> {os.readlink(p)}' if p.is_symlink() else 'dir' if p.is_dir() else p.read_bytes()
    return out


def sandbox(d):
    "A sandbox in `d`: the user's notes beside the data folder and a file of theirs inside it; returns the data folder."
    (d/'notes.txt').write_bytes(b'my notes')
    (d/'data').mkdir()
    (d/'data'/'keep.txt').write_bytes(b'my results')
    return d/'data'


def unchanged(d, allowed=()):
    "Check: the sandbox `d` is as it was when this was called, except for the relative paths in `allowed`."
    before = tree(d)
    def check():
        now = {k: v for k, v in tree(d).items() if k not in allowed}
        assert now == before, f"sandbox changed: {sorted(set(now) ^ set(before)) or 'contents differ'}"
    return check


# ---------------------------------------------------------------- crafted archives
SYM, HARD = dict(type=tarfile.SYMTYPE), dict(type=tarfile.LNKTYPE)


def tar_of(fn, *members):
    "A tar of `members`: (name, data) for files or (name, dict of TarInfo fields) for links and folders."
    with tarfile.open(fn, 'w') as tf:
        for name, what in members:
            if isinstance(what, dict): add(tf, name, **what)
            else: add(tf, name, what)
    return fn


def long_chain_members(victim, up, top=''):
    "CVE-2025-4517's shape: a link chain too long for realpath makes `escape` lead `up` folders above `top`; then `victim` is written there."
    comp, steps, path, members = 'd' * 247, 'abcdefghijklmnop', top, []
    for s in steps:
        members += [(os.path.join(path, comp), dict(type=tarfile.DIRTYPE)), (os.path.join(path, s), dict(linkname=comp, **SYM))]
        path = os.path.join(path, comp)
    bottom = os.path.join(*steps, 'l' * 254)
    return members + [(top + bottom, dict(linkname='/'.join(['..'] * len(steps)), **SYM)),
                      (top + 'escape', dict(linkname=bottom + '/..' * up, **SYM)),
                      (top + 'hard', dict(linkname=f'{top}escape/{victim}', **HARD)), (top + 'hard', b'overwritten')]


def zip_link(fn, name, target, then=()):
    "A zip with a Unix symlink member `name` -> `target`, then the (name, data) members `then`."
    with zipfile.ZipFile(fn, 'w') as zf:
        info = zipfile.ZipInfo(name)
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, target)
        for n, data in then: zf.writestr(n, data)
    return fn


def zip_bomb(fn, mib=256):
    "A zip of `mib` MiB of zeros (about 1/1000 of that on disk)."
    with zipfile.ZipFile(fn, 'w', zipfile.ZIP_DEFLATED, compresslevel=9) as zf: zf.writestr('zeros.bin', bytes(mib << 20))
    return fn


def overlapping_zip_bomb(fn, entries=520, member_mib=64):
    "A zip whose `entries` directory entries all point at one deflated run of zeros: a small file declaring entries × member_mib MiB."
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(member_mib << 20)
    data, crc = c.compress(zeros) + c.flush(), zlib.crc32(zeros)
    local = struct.pack('<4s5H3L2H', b'PK\x03\x04', 20, 0, 8, 0, 0, crc, len(data), len(zeros), 1, 0) + b'a' + data
    names = [f'ixi_tiny/image/{i:05d}_image.nii'.encode() for i in range(entries)]
    central = b''.join(struct.pack('<4s6H3L5H2L', b'PK\x01\x02', 20, 20, 0, 8, 0, 0, crc, len(data), len(zeros), len(n),
                                   0, 0, 0, 0, 0, 0) + n for n in names)
    end = struct.pack('<4s4H2LH', b'PK\x05\x06', 0, 0, entries, entries, len(central), len(local), 0)
    Path(fn).write_bytes(local + central + end)
    return fn


def extract_case(members_or_builder, dest_name='Task', **kwargs):
    "A builder: the sandbox, an archive (from `tar_of` members or a builder of (folder) -> file), and safe_extract into data/."
    def build(d, models=None):
        data = sandbox(d)
        src = d/'downloads'; src.mkdir()
        archive = members_or_builder(src) if callable(members_or_builder) else tar_of(src/'evil.tar', *members_or_builder)
        return (lambda: safe_extract(archive, data/dest_name, **kwargs)), unchanged(d)
    return build


# ---------------------------------------------------------------- downloads and layouts
def served_file(d, name='f.bin', data=b'abc' * 1000):
    "(URL on a closed port, `d/out/name` already holding the file): any download attempt would fail."
    dest = d/'out'/name
    dest.parent.mkdir(); dest.write_bytes(data)
    return f'http://127.0.0.1:{closed_port()}/{name}', dest


def md5_not_hex(d, models=None):
    url, dest = served_file(d)
    return (lambda: download_url(url, dest, md5='abc123')), unchanged(d)


def md5_truncated(d, models=None):
    url, dest = served_file(d)
    return (lambda: download_url(url, dest, md5=file_digest(dest)[:31])), unchanged(d)


def sha256_not_hex(d, models=None):
    url, dest = served_file(d)
    return (lambda: download_url(url, dest, sha256=file_digest(dest, 'md5'))), unchanged(d)  # an MD5 given as SHA-256


def size_negative(d, models=None):
    url, dest = served_file(d)
    return (lambda: download_url(url, dest, size=-1)), unchanged(d)


def write_case(folder, name, arr):
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), folder/name)


def task_folder(d, cases=('case_001', 'case_002'), channels=0, dataset_json=None):
    "A task folder without dataset.json (or with `dataset_json`): images in mixed dtypes, labels by the same name."
    t = d/'Task04_Hippocampus'
    for i, case in enumerate(cases):
        dtype = np.uint8 if i % 2 else np.float32
        names = [f'{case}_{c:04d}.nii.gz' for c in range(channels)] if channels else [f'{case}.nii.gz']
        for n in names: write_case(t/'imagesTr', n, np.full((4, 5, 3), 7 * (i + 1), dtype))
        write_case(t/'labelsTr', f'{case}.nii.gz', np.ones((4, 5, 3), np.uint8))
    if dataset_json is not None: (t/'dataset.json').write_text(dataset_json)
    return t


def label_without_image(d, models=None):
    t = task_folder(d); (t/'imagesTr'/'case_002.nii.gz').unlink()
    return lambda: decathlon_tables(t)


def image_without_label(d, models=None):
    t = task_folder(d); (t/'labelsTr'/'case_001.nii.gz').unlink()
    return lambda: decathlon_tables(t)


def channel_counts_differ(d, models=None):
    t = task_folder(d, channels=2); (t/'imagesTr'/'case_002_0001.nii.gz').unlink()
    return lambda: decathlon_tables(t)


def channel_gap(d, models=None):
    t = task_folder(d, channels=3); (t/'imagesTr'/'case_001_0001.nii.gz').unlink(); (t/'imagesTr'/'case_002_0001.nii.gz').unlink()
    return lambda: decathlon_tables(t)


def two_files_one_case(d, models=None):
    t = task_folder(d)
    write_case(t/'imagesTr', 'case_001.nii', np.zeros((4, 5, 3), np.float32))
    return lambda: decathlon_tables(t)


def dataset_json_not_json(d, models=None):
    t = task_folder(d, dataset_json='{"training": [{"image": "./imagesTr/case_001.nii.gz",}]}')
    return lambda: decathlon_tables(t)


def dataset_json_entry_without_label(d, models=None):
    t = task_folder(d, dataset_json=json.dumps({'training': [{'image': './imagesTr/case_001.nii.gz'}]}))
    return lambda: decathlon_tables(t)


def dataset_json_training_not_a_list(d, models=None):
    t = task_folder(d, dataset_json=json.dumps({'training': {'image': './imagesTr/case_001.nii.gz'}}))
    return lambda: decathlon_tables(t)


def nnunet_num_training_mismatch(d, models=None):
    t = task_folder(d, channels=1, dataset_json=json.dumps({'channel_names': {'0': 'T1'}, 'numTraining': 3, 'file_ending': '.nii.gz'}))
    return lambda: decathlon_tables(t)


def offline_registry(d):
    "A registry whose every file is on a closed port: any network use fails."
    return mirror_registry(f'http://127.0.0.1:{closed_port()}/mirror')


def local_copy_checksum_mismatch(d, models=None):
    (d/'adrenalmnist3d.npz').write_bytes(b'not the release')
    return (lambda: download_medmnist3d_dataset('AdrenalMNIST3D', d/'data', local=d/'adrenalmnist3d.npz',
                                                registry=offline_registry(d))), unchanged(d)


def copy_in_data_folder_mismatch(d, models=None):
    medmnist_npz(d/'adrenalmnist3d.npz')  # a stand-in, not the published file
    return (lambda: download_medmnist3d_dataset('AdrenalMNIST3D', d, registry=offline_registry(d))), unchanged(d)


def local_missing(d, models=None):
    return lambda: download_medmnist3d_dataset('AdrenalMNIST3D', d, local=d/'nowhere'/'adrenalmnist3d.npz', registry=offline_registry(d))


def local_folder_without_copy(d, models=None):
    (d/'downloads').mkdir(); (d/'downloads'/'other.tar').write_bytes(b'x')
    return (lambda: download_decathlon_task('Task04_Hippocampus', d/'data', local=d/'downloads', registry=offline_registry(d))), unchanged(d)


def dest_not_a_copy_before_download(d, models=None):
    (d/'Task09_Spleen').mkdir(); (d/'Task09_Spleen'/'todo.txt').write_text('mine')
    return (lambda: download_decathlon_task('Task09_Spleen', d, registry=offline_registry(d))), unchanged(d)


def data_folder_env_is_a_file(d, models=None):
    (d/'data.txt').write_text('x')
    def call():
        old = os.environ.get('FASTMED_DATA')
        os.environ['FASTMED_DATA'] = str(d/'data.txt')
        try: return data_folder()
        finally:
            if old is None: os.environ.pop('FASTMED_DATA')
            else: os.environ['FASTMED_DATA'] = old
    return call


def disk_too_small(d, models=None):
    data = sandbox(d)
    (d/'downloads').mkdir()
    with zipfile.ZipFile(d/'downloads'/'big.zip', 'w', zipfile.ZIP_DEFLATED) as zf: zf.writestr('zeros.bin', bytes(4 << 20))
    real = shutil.disk_usage
    def call():
        shutil.disk_usage = lambda p: real(p)._replace(free=1 << 20)  # 1 MiB free
        try: return safe_extract(d/'downloads'/'big.zip', data/'big')
        finally: shutil.disk_usage = real
    return call, unchanged(d)


def zip_bad_crc(d, models=None):
    fn = d/'crc.zip'
    with zipfile.ZipFile(fn, 'w') as zf: zf.writestr('a.txt', b'hello world')
    raw = bytearray(fn.read_bytes()); raw[raw.index(b'hello world')] ^= 1; fn.write_bytes(bytes(raw))
    (d/'data').mkdir()
    return (lambda: safe_extract(fn, d/'data'/'out')), unchanged(d)


def zip_file_and_folder_same_name(d, models=None):
    fn = d/'clash.zip'
    with zipfile.ZipFile(fn, 'w') as zf: zf.writestr('study/a', b'file'); zf.writestr('study/a/b.nii.gz', b'under it')
    (d/'data').mkdir()
    return (lambda: safe_extract(fn, d/'data'/'out')), unchanged(d)


def zip_too_many_members(d, models=None):
    fn = d/'many.zip'
    with zipfile.ZipFile(fn, 'w') as zf:
        for i in range(2001): zf.writestr(f'empty/{i}', b'')
    (d/'data').mkdir()
    return (lambda: safe_extract(fn, d/'data'/'out', max_members=2000)), unchanged(d)


# ---------------------------------------------------------------- the catalogue
@dataclass
class Case:
    id: str
    stage: str  # archive, download, local, layout
    build: object  # (tmp_path, models) -> call, or (call, check)
    culprit: str  # file or argument the message must name
    problem: str  # fragment stating what is wrong
    error: type = MedicalInputError


CHAIN = 'a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/' + 'l' * 254
CATALOGUE = [
    # from issue 10 (archive escapes and sizes; checksum arguments) and issue 11 (layouts without dataset.json)
    Case('tar_long_symlink_chain_cve_2025_4517', 'archive', extract_case(long_chain_members('notes.txt', up=2)),  # temporary folder, data, sandbox
         'evil.tar', f"member '{CHAIN}' lies inside link member 'a'"),
    Case('tar_short_symlink_chain_then_file', 'archive',
         extract_case([('a', dict(linkname='.', **SYM)), ('a/b', dict(linkname='..', **SYM)), ('a/b/notes.txt', b'x')]),
         'evil.tar', "member 'a/b' lies inside link member 'a'"),
    Case('tar_absolute_symlink_then_file', 'archive',
         extract_case(lambda s: tar_of(s/'evil.tar', ('up', dict(linkname=str(s.parent), **SYM)), ('up/notes.txt', b'x'))),
         'evil.tar', "member 'up' is a symlink to"),
    Case('tar_dotdot_symlink_then_file', 'archive',
         extract_case([('Task/up', dict(linkname='../../..', **SYM)), ('Task/up/notes.txt', b'x')], subdir='Task'),
         'evil.tar', "member 'Task/up' is a symlink to '../../..', outside the destination"),
    Case('tar_hardlink_to_outside', 'archive', extract_case([('h', dict(linkname='../notes.txt', **HARD)), ('h', b'x')]),
         'evil.tar', "member 'h' is a hardlink to '../notes.txt', outside the destination"),
    Case('tar_hardlink_to_absent_member', 'archive', extract_case([('ok.txt', b'ok'), ('h', dict(linkname='lost.nii.gz', **HARD))]),
         'evil.tar', "member 'h' is a hardlink to 'lost.nii.gz', which is not a regular file earlier in the archive"),
    Case('zip_bomb_260kb_declares_256mb', 'archive', extract_case(lambda s: zip_bomb(s/'bomb.zip'), max_bytes=64 << 20),
         'bomb.zip', f"declares {256 << 20:,} bytes unpacked, more than max_bytes={64 << 20:,}; nothing was extracted"),
    Case('zip_absolute_symlink', 'archive', extract_case(lambda s: zip_link(s/'evil.zip', 'ln', '/etc/passwd')),
         'evil.zip', "member 'ln' is a symlink to '/etc/passwd', outside the destination"),
    Case('md5_not_hex', 'download', md5_not_hex, "md5='abc123'", 'expected 32 hex digits'),
    Case('label_without_image', 'layout', label_without_image, 'labelsTr/case_002.nii.gz', 'has no image in imagesTr'),
    Case('image_without_label', 'layout', image_without_label, 'imagesTr/case_001.nii.gz', 'has no label: labelsTr holds no file named case_001'),
    Case('channel_counts_differ', 'layout', channel_counts_differ, 'imagesTr', "case 'case_002' has 1 channel file, but case 'case_001' has 2"),
    # new cases of this catalogue
    Case('md5_truncated_keeps_good_file', 'download', md5_truncated, 'md5=', 'expected 32 hex digits'),
    Case('sha256_given_an_md5', 'download', sha256_not_hex, 'sha256=', 'expected 64 hex digits'),
    Case('size_negative', 'download', size_negative, 'size=-1', 'expected a number of bytes'),
    Case('tar_member_inside_symlinked_folder', 'archive', extract_case([('sub', dict(type=tarfile.DIRTYPE)),
         ('data', dict(linkname='sub', **SYM)), ('data/x.nii.gz', b'x')]), 'evil.tar', "member 'data/x.nii.gz' lies inside link member 'data'"),
    Case('tar_member_inside_symlink_other_case', 'archive', extract_case([('Data', dict(linkname='.', **SYM)), ('data/x', b'x')]),
         'evil.tar', "member 'data/x' lies inside link member 'data'"),
    Case('tar_symlink_target_through_link', 'archive', extract_case([('d', dict(type=tarfile.DIRTYPE)), ('d/up', dict(linkname='..', **SYM)),
         ('x', dict(linkname='d/up/../..', **SYM))]), 'evil.tar', "member 'x' is a symlink to 'd/up/../..', which passes through link member 'd/up'"),
    Case('tar_hardlink_to_later_member', 'archive', extract_case([('h', dict(linkname='f.nii.gz', **HARD)), ('f.nii.gz', b'data')]),
         'evil.tar', "member 'h' is a hardlink to 'f.nii.gz', which is not a regular file earlier"),
    Case('tar_hardlink_to_folder', 'archive', extract_case([('imagesTr', dict(type=tarfile.DIRTYPE)), ('h', dict(linkname='imagesTr', **HARD))]),
         'evil.tar', "member 'h' is a hardlink to 'imagesTr', which is not a regular file"),
    Case('tar_hardlink_to_symlink', 'archive', extract_case([('s', dict(linkname='f', **SYM)), ('f', b'x'), ('h', dict(linkname='s', **HARD))]),
         'evil.tar', "member 'h' is a hardlink to 's', which is not a regular file"),
    Case('tar_symlink_outside_subdir', 'archive', extract_case([('Task/imagesTr', dict(linkname='../other', **SYM)), ('other/x', b'x')], subdir='Task'),
         'evil.tar', "member 'Task/imagesTr' is a symlink to '../other', outside the destination"),
    Case('declared_size_beyond_free_space', 'archive', disk_too_small, 'big.zip', f"declares {4 << 20:,} bytes unpacked, but only {1 << 20:,} bytes are free"),
    Case('zip_too_many_members', 'archive', zip_too_many_members, 'many.zip', 'holds 2,001 members, more than max_members=2,000'),
    Case('zip_member_bad_crc', 'archive', zip_bad_crc, 'crc.zip', 'could not be extracted (BadZipFile: Bad CRC-32'),
    Case('zip_file_and_folder_same_name', 'archive', zip_file_and_folder_same_name, 'clash.zip', 'could not be extracted (NotADirectoryError'),
    Case('channel_gap', 'layout', channel_gap, 'imagesTr', "case 'case_001' has channel files case_001_0000.nii.gz, case_001_0002.nii.gz: expected"),
    Case('two_files_one_case', 'layout', two_files_one_case, 'imagesTr/case_001.nii.gz', "and case_001.nii are two files for case 'case_001'"),
    Case('dataset_json_not_json', 'layout', dataset_json_not_json, 'dataset.json', 'is not valid JSON'),
    Case('dataset_json_entry_without_label', 'layout', dataset_json_entry_without_label, 'dataset.json', "'training' entry 0 has no 'label' path"),
    Case('dataset_json_training_not_a_list', 'layout', dataset_json_training_not_a_list, 'dataset.json', "'training' is a dict, expected a list"),
    Case('nnunet_num_training_mismatch', 'layout', nnunet_num_training_mismatch, 'dataset.json', 'says numTraining 3, but imagesTr and labelsTr hold 2 cases'),
    Case('local_copy_checksum_mismatch', 'local', local_copy_checksum_mismatch, 'adrenalmnist3d.npz', 'is not the registered adrenalmnist3d.npz (md5 '),
    Case('copy_in_data_folder_mismatch', 'local', copy_in_data_folder_mismatch, 'adrenalmnist3d.npz', 'it was left as it is'),
    Case('local_missing', 'local', local_missing, "local='", 'does not exist'),
    Case('local_folder_without_copy', 'local', local_folder_without_copy, "local='", 'holds neither Task04_Hippocampus.tar nor an extracted copy'),
    Case('dest_not_a_copy_refused_before_download', 'local', dest_not_a_copy_before_download, 'Task09_Spleen', 'exists and holds no finished extraction'),
    Case('data_folder_env_is_a_file', 'local', data_folder_env_is_a_file, 'FASTMED_DATA=', 'is a file, not a data folder'),
]
ISSUE_CASES = 12  # the first rows: the cases issues 10 and 11 name; the rest are this catalogue's own


def test_catalogue_is_complete():
    assert len({c.id for c in CATALOGUE}) == len(CATALOGUE)
    assert len(CATALOGUE) - ISSUE_CASES >= 10
    assert {c.stage for c in CATALOGUE} == {'archive', 'download', 'local', 'layout'}


@pytest.mark.parametrize('case', CATALOGUE, ids=[f'{c.stage}-{c.id}' for c in CATALOGUE])
def test_bad_input(tmp_path, case):
    built = case.build(tmp_path, None)
    call, check = built if isinstance(built, tuple) else (built, None)
    before = file_states(tmp_path)
    with pytest.raises(case.error) as info: call()
    msg = str(info.value)
    assert msg.strip() and '\n' not in msg, repr(msg)
    assert case.culprit in msg, f"{case.culprit!r} not named in {msg!r}"
    assert case.problem in msg, f"{case.problem!r} not in {msg!r}"
    assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__)
    assert_user_files_kept(tmp_path, before, getattr(case, "outputs", ()))  # no user file modified or deleted
    if check is not None: check()


# ---------------------------------------------------------------- crafted archives through the downloaders
DECATHLON_ESCAPES = {
    'long_symlink_chain': long_chain_members('notes.txt', up=3, top='Task02_Heart/'),
    'short_chain_and_hardlink': [('Task02_Heart/a', dict(linkname='.', **SYM)), ('Task02_Heart/a/b', dict(linkname='../..', **SYM)),
                                 ('Task02_Heart/h', dict(linkname='Task02_Heart/a/b/keep.txt', **HARD)), ('Task02_Heart/h', b'x')],
    'absolute_link_then_file': [('Task02_Heart/dataset.json', b'{}'), ('Task02_Heart/out', dict(linkname='/', **SYM)),
                                ('Task02_Heart/out/tmp/evil.txt', b'x')],
    'dotdot_link_then_file': [('Task02_Heart/up', dict(linkname='../../..', **SYM)), ('Task02_Heart/up/notes.txt', b'x')],
    'hardlink_outside': [('Task02_Heart/h', dict(linkname='../keep.txt', **HARD)), ('Task02_Heart/h', b'x')],
    'hardlink_to_absent_member': [('Task02_Heart/dataset.json', b'{}'), ('Task02_Heart/h', dict(linkname='Task02_Heart/imagesTr/x.nii.gz', **HARD))],
}


@pytest.mark.parametrize('name', list(DECATHLON_ESCAPES))
def test_decathlon_download_refuses_escapes(tmp_path, serve, name):
    base, log = serve()
    box = tmp_path/'sandbox'; box.mkdir()
    data = sandbox(box)
    tar_of(tmp_path/'site'/'Task02_Heart.tar', *DECATHLON_ESCAPES[name])
    check = unchanged(box, allowed={'data/Task02_Heart.tar'})
    with pytest.raises(MedicalInputError) as e:
        download_decathlon_task('Task02_Heart', data, registry=mirror_registry(base, checksums_from=tmp_path/'site'), progress=False)
    msg = str(e.value)
    assert '\n' not in msg and msg.startswith(f"'{(data/'Task02_Heart.tar').resolve()}': member ") and msg.endswith('nothing was extracted')
    check()
    assert sorted(os.listdir(data)) == ['Task02_Heart.tar', 'keep.txt'] and (box/'notes.txt').read_bytes() == b'my notes'


def test_long_chain_really_escapes_python_filter_here(tmp_path):
    "The crafted chain is a real attack on this interpreter's own 'data' filter (if it has the bug): why fastmed's rule exists."
    if not hasattr(tarfile, 'data_filter'): pytest.skip('no tarfile filters on this Python')
    (tmp_path/'notes.txt').write_bytes(b'my notes')
    tar_of(tmp_path/'chain.tar', *long_chain_members('notes.txt', up=1))
    try:
        with tarfile.open(tmp_path/'chain.tar') as tf: tf.extractall(tmp_path/'out', filter='data')
    except tarfile.FilterError: assert (tmp_path/'notes.txt').read_bytes() == b'my notes'  # a fixed Python (June 2025 on)
    else: assert (tmp_path/'notes.txt').read_bytes() == b'overwritten'  # CVE-2025-4517: the filter let it out
    with pytest.raises(MedicalInputError, match="lies inside link member 'a'"): safe_extract(tmp_path/'chain.tar', tmp_path/'data'/'x')
    assert not (tmp_path/'data').exists()


@pytest.mark.parametrize('make, expected', [
    (lambda s: overlapping_zip_bomb(s/'ixi_tiny.zip'), f"declares {520 * (64 << 20):,} bytes unpacked, more than max_bytes={32 << 30:,}"),
    (lambda s: zip_link(s/'ixi_tiny.zip', 'ixi_tiny/image', '../../', then=[('ixi_tiny/label/x.nii.gz', b'x')]),
     "member 'ixi_tiny/image' is a symlink to '../../', outside the destination"),
])
def test_ixi_tiny_download_refuses_bombs_and_links(tmp_path, serve, make, expected):
    base, log = serve()
    archive = make(tmp_path/'site')
    assert archive.stat().st_size < 300_000
    box = tmp_path/'sandbox'; box.mkdir()
    data = sandbox(box)
    check = unchanged(box, allowed={'data/ixi_tiny.zip'})
    with pytest.raises(MedicalInputError) as e:
        download_ixi_tiny(data, registry=mirror_registry(base, checksums_from=tmp_path/'site'), progress=False)
    assert expected in str(e.value) and '\n' not in str(e.value)
    check()
    assert not (data/'IXITiny').exists() and len(log) == 1


def test_good_archive_with_inside_links_still_extracts(tmp_path):
    "The rules cost a real data set nothing: inside symlinks, hard links to earlier files, './' names all pass."
    tar_of(tmp_path/'ok.tar', ('./Task/', dict(type=tarfile.DIRTYPE)), ('./Task/imagesTr/a.nii.gz', b'aaa'),
           ('./Task/imagesTr/b.nii.gz', dict(linkname='./Task/imagesTr/a.nii.gz', **HARD)),
           ('./Task/latest.nii.gz', dict(linkname='imagesTr/a.nii.gz', **SYM)), ('./Task/self', dict(linkname='.', **SYM)))
    dest = safe_extract(tmp_path/'ok.tar', tmp_path/'data'/'Task', subdir='Task')
    assert (dest/'imagesTr'/'b.nii.gz').read_bytes() == b'aaa' and (dest/'latest.nii.gz').read_bytes() == b'aaa'
    assert (dest/'self').is_symlink() and os.readlink(dest/'self') == '.'
