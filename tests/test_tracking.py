"""MLflow tracking against a real `mlflow server` on 127.0.0.1 (free port, temporary store and artifact folders).

A bounded fit with `MLflowTracking` logs to the server; the test reads the run back through the server: the metric
histories equal the Recorder's values, and the model downloaded from the run's artifacts predicts the same mask as the
learner's network. An unreachable server gives exactly one warning, the fit finishes, and the run is in the local store.
The server is stopped afterwards.
"""
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import fastai.callback.all  # noqa: F401
from fastai.data.transforms import ColReader, IndexSplitter
from fastai.learner import Learner
from fastai.vision.data import ImageBlock
from monai.losses import DiceCELoss

from fastmed.io import write_nifti
from fastmed.core import MedImage
from fastmed.data import MedDataBlock, MedMaskBlock
from fastmed.losses import CustomLoss
from fastmed.metrics import AccumulatedDice
from fastmed.export import build_model
from fastmed.distributed import free_port
from fastmed.tracking import MLflowTracking, load_tracked_model, local_store, server_reachable

mlflow = pytest.importorskip('mlflow')
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    "`mlflow server` on a free loopback port, serving artifacts from a temporary folder; stopped after the tests."
    root, port = tmp_path_factory.mktemp('mlflow'), free_port()
    env = {**os.environ, 'MLFLOW_ALLOW_FILE_STORE': 'true'}  # a folder backend: no database migrations at start-up
    proc = subprocess.Popen([str(Path(sys.executable).parent/'mlflow'), 'server', '--host', '127.0.0.1', '--port', str(port),
                             '--backend-store-uri', str(root/'backend'), '--artifacts-destination', str(root/'artifacts'),
                             '--workers', '1'], env=env, stdout=subprocess.DEVNULL, stderr=open(root/'server.log', 'w'),
                            start_new_session=True)
    uri, t0 = f'http://127.0.0.1:{port}', time.monotonic()
    while server_reachable(uri, timeout=1) is not None:
        assert proc.poll() is None and time.monotonic() - t0 < 120, (root/'server.log').read_text()[-2000:]
        time.sleep(0.5)
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    try: proc.wait(20)
    except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait()


def cube_learner(work, n=6):
    "A small UNet (built with build_model, so save_model can describe it) on 16³ synthetic cubes."
    rows = []
    for i in range(n):
        rng = np.random.default_rng(i)
        m = np.zeros((16, 16, 16), np.uint8); a = rng.integers(2, 7, 3); m[a[0]:a[0]+7, a[1]:a[1]+7, a[2]:a[2]+7] = 1
        x = m + rng.normal(0, 0.3, m.shape).astype(np.float32)
        rows.append((str(write_nifti(work/f'img{i}.nii.gz', x, np.eye(4))),
                     str(write_nifti(work/f'msk{i}.nii.gz', m, np.eye(4), dtype=np.uint8))))
    df = pd.DataFrame(rows, columns=['img', 'mask'])
    dls = MedDataBlock(blocks=(ImageBlock(cls=MedImage), MedMaskBlock), get_x=ColReader('img'), get_y=ColReader('mask'),
                       splitter=IndexSplitter([n - 2, n - 1])).dataloaders(df, bs=2, num_workers=0)
    torch.manual_seed(0)
    net = build_model('UNet', spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,))
    return Learner(dls, net, loss_func=CustomLoss(DiceCELoss(to_onehot_y=True, softmax=True)), metrics=[AccumulatedDice(2)]), df


def network_mask(learn, model, path):
    "The mask the learner's own network predicts on the model's preprocessed input."
    x = model.preprocess(path).as_subclass(torch.Tensor)
    with torch.no_grad(): return learn.model.eval().cpu()(x.reshape(1, *x.shape[-4:])).argmax(1)[0]


def check_run(client, run_id, learn, params):
    run = client.get_run(run_id)
    assert run.info.status == 'FINISHED'
    assert {k: run.data.params[k] for k in params} == params
    for i, name in enumerate(['train_loss', 'valid_loss', 'accumulated_dice']):
        history = client.get_metric_history(run_id, name)
        assert [m.step for m in history] == list(range(len(learn.recorder.values)))
        np.testing.assert_allclose([m.value for m in history], [v[i] for v in learn.recorder.values], rtol=1e-6)


def test_tracking_server(server, tmp_path):
    "A 2-epoch fit logged to the server: metrics equal the Recorder's, the model from the artifacts predicts the same mask."
    learn, df = cube_learner(tmp_path)
    track = MLflowTracking(server, experiment='test', run_name='cubes', params={'fold': 0}, local_dir=tmp_path/'local',
                           class_names=['background', 'cube'])
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)  # no fallback warning: the server was used
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(2, 1e-2, cbs=track)
    assert track.url == server and not (tmp_path/'local').exists()
    check_run(mlflow.MlflowClient(server), track.run_id, learn, {'fold': '0', 'model': 'UNet', 'n_epoch': '2'})
    names = {f.path for f in mlflow.MlflowClient(server).list_artifacts(track.run_id, 'figures')}
    assert names == {'figures/dice_boxplot.png', 'figures/worst_cases.png'}
    model = load_tracked_model(track.run_id, server)
    for path in df.img[-2:]:
        mask = model.predict(path).as_subclass(torch.Tensor)[0]
        assert torch.equal(mask, network_mask(learn, model, path)) and mask.sum() > 0


def test_unreachable_server(tmp_path):
    "A server that does not answer: one warning, the fit finishes, the run (metrics and model) is in the local store."
    learn, df = cube_learner(tmp_path)
    dead = f'http://127.0.0.1:{free_port()}'
    track = MLflowTracking(dead, run_name='offline', local_dir=tmp_path/'local', timeout=2)
    t0 = time.monotonic()
    with pytest.warns(UserWarning) as caught:
        with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-2, cbs=track)
    mine = [w for w in caught if 'MLflow tracking' in str(w.message)]
    assert len(mine) == 1 and dead in str(mine[0].message) and 'local store' in str(mine[0].message)
    assert len(learn.recorder.values) == 2 and time.monotonic() - t0 < 120
    local = local_store(tmp_path/'local')[0]
    assert track.url == local
    check_run(mlflow.MlflowClient(local), track.run_id, learn, {'model': 'UNet', 'n_epoch': '2'})
    model = load_tracked_model(track.run_id, local_dir=tmp_path/'local')
    assert torch.equal(model.predict(df.img[5]).as_subclass(torch.Tensor)[0], network_mask(learn, model, df.img[5]))
