"""Bad-input catalogue, part hospital path (DICOM-SEG, PACS, web app): rows in the format of `test_bad_inputs.py`.

Each row is (id, stage, builder, culprit, problem, error type): the builder makes the bad input in a temporary folder
and returns the call a user would make. The test asserts the error type (for 'cli' rows: the exit status), that the
message is ONE line, that it names the culprit and states the problem, and that no user file changed.
"""
import socket, zipfile
from pathlib import Path

import numpy as np
import pytest
from test_bad_inputs import Case, _cli, _one_line, file_states, assert_user_files_kept, models  # noqa: F401 (fixture)

from fastmed.app import upload_source
from fastmed.core import MedImage, MedMask
from fastmed.dicomseg import dicom_seg, read_dicom_seg, segment_spec, write_dicom_series
from fastmed.io import MedicalInputError, write_nifti
from fastmed.pacs import pacs_credentials

VOL = np.arange(8 * 6 * 5, dtype=np.float32).reshape(8, 6, 5) % 7


def _series(d, name='series', affine=np.diag([1., 1., 3., 1.])): return write_dicom_series(d / name, VOL, affine)


def _free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def seg_of_nifti(d, models):
    return lambda: _cli('predict', models['one'], models['image'], '-o', d / 'out', '--format', 'dicom-seg')


def seg_bad_segments_file(d, models):
    (d / 'segments.json').write_text('{"1": {"colour": "red"}}')
    return lambda: _cli('predict', models['one'], _series(d), '-o', d / 'out', '--format', 'dicom-seg', '--segments', d / 'segments.json')


def seg_mask_off_grid(d, models):
    series, other = _series(d), _series(d, 'other', np.diag([-1., -1., 3., 1.]))
    img = MedImage.create(other)
    return lambda: dicom_seg(MedMask.from_data((img > 3).long().as_subclass(__import__('torch').Tensor), img.geometry), series)


def seg_read_not_seg(d, models):
    series = _series(d)
    return lambda: read_dicom_seg(series / '0000.dcm', series)


def segment_bad_colour(d, models): return lambda: segment_spec({'1': {'color': [300, 0, 0]}})


def series_bad_modality(d, models): return lambda: write_dicom_series(d / 'us', VOL, np.eye(4), modality='US')


def pacs_half_credentials(d, models): return lambda: pacs_credentials('alice', '')


def pacs_server_down(d, models):
    url = f'http://127.0.0.1:{_free_port()}/dicom-web'
    return lambda: _cli('pacs', 'predict', models['one'], '--server', url, '--study', '1.2.3', '--user', 'a', '--password', 'b')


def pacs_not_a_url(d, models):
    return lambda: _cli('pacs', 'predict', models['one'], '--server', 'localhost:8042', '--study', '1.2.3')


def pacs_missing_password_file(d, models):
    return lambda: _cli('pacs', 'predict', models['one'], '--server', 'http://127.0.0.1:9/dicom-web', '--study', '1.2.3',
                        '--user', 'a', '--password-file', d / 'nope.txt')


def app_not_an_image(d, models): (d / 'notes.txt').write_text('x'); return lambda: upload_source(d / 'notes.txt', d / 'work')


def app_zip_two_series(d, models):
    with zipfile.ZipFile(d / 'two.zip', 'w') as z: z.writestr('a/1.dcm', 'x'); z.writestr('b/1.dcm', 'y')
    return lambda: upload_source(d / 'two.zip', d / 'work')


def app_zip_escape(d, models):
    with zipfile.ZipFile(d / 'evil.zip', 'w') as z: z.writestr('../../escape.dcm', 'x')
    return lambda: upload_source(d / 'evil.zip', d / 'work')


def app_zip_too_big(d, models):
    with zipfile.ZipFile(d / 'big.zip', 'w', zipfile.ZIP_DEFLATED) as z: z.writestr('s/1.dcm', b'\0' * 200_000)
    return lambda: upload_source(d / 'big.zip', d / 'work', max_bytes=100_000)


CATALOGUE = [
    Case('seg_of_nifti', 'cli', seg_of_nifti, 'good_input.nii.gz', 'is not a DICOM series folder', 2),
    Case('seg_bad_segments_file', 'cli', seg_bad_segments_file, 'segments.json', "unknown keys ['colour']", 2),
    Case('seg_mask_off_grid', 'writing', seg_mask_off_grid, 'series', "the mask is not on the series' grid"),
    Case('seg_read_not_seg', 'reading', seg_read_not_seg, '0000.dcm', 'is not a readable DICOM Segmentation'),
    Case('segment_bad_colour', 'writing', segment_bad_colour, 'label 1', 'color [300, 0, 0]: expected'),
    Case('series_bad_modality', 'writing', series_bad_modality, 'modality', "expected 'CT' or 'MR'"),
    Case('pacs_half_credentials', 'inference', pacs_half_credentials, 'credentials', 'a user was given without a password'),
    Case('pacs_server_down', 'cli', pacs_server_down, 'http://127.0.0.1:', 'cannot be reached', 2),
    Case('pacs_not_a_url', 'cli', pacs_not_a_url, 'localhost:8042', 'is not a DICOMweb URL', 2),
    Case('pacs_missing_password_file', 'cli', pacs_missing_password_file, 'nope.txt', 'password file is missing', 2),
    Case('app_not_an_image', 'reading', app_not_an_image, 'notes.txt', 'is not an image'),
    Case('app_zip_two_series', 'reading', app_zip_two_series, 'two.zip', 'files in 2 folders'),
    Case('app_zip_escape', 'reading', app_zip_escape, 'evil.zip', 'nothing was extracted'),
    Case('app_zip_too_big', 'reading', app_zip_too_big, 'big.zip', 'nothing was extracted'),
]


def test_catalogue_rows(): assert len({c.id for c in CATALOGUE}) == len(CATALOGUE) >= 14


@pytest.mark.parametrize('case', CATALOGUE, ids=[f'{c.stage}-{c.id}' for c in CATALOGUE])
def test_bad_input(tmp_path, models, case):
    call = case.build(tmp_path, models)
    before = file_states(tmp_path)
    if case.stage == 'cli' and isinstance(case.error, int):
        status, out, err = call()
        assert status == case.error, (status, out, err)
        msg = _one_line(next(l for l in err.splitlines() if case.culprit in l))
        assert msg.startswith('fastmed: error:') and len(err.strip().splitlines()) == 1, err
    else:
        with pytest.raises(MedicalInputError) as info: call()
        msg = _one_line(str(info.value))
    assert case.culprit in msg, f"{case.culprit!r} not named in {msg!r}"
    assert case.problem in msg.replace(str(tmp_path), '<tmp>'), f"{case.problem!r} not in {msg!r}"
    assert_user_files_kept(tmp_path, before, case.outputs)
    assert not (tmp_path.parent / 'escape.dcm').exists() and not list(tmp_path.rglob('.*.tmp*'))
