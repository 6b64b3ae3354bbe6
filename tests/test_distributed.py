"""Distributed data parallel on the CPU: 2 processes, gloo backend, loopback, each test bounded in time.

The ranks are forked by `fastmed.distributed.launch` (the children share the modules this file imported, so nothing
is imported twice). Each rank writes what it saw to a JSON file of its own; the test process compares them with a
one-process run over the same item order.
"""
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
import torch.distributed as dist
from safetensors.torch import save_file, load_file
import fastai.callback.all  # noqa: F401
from fastai.callback.core import Callback, CancelFitException
from fastai.data.transforms import ColReader, IndexSplitter
from fastai.learner import Learner
from fastai.optimizer import SGD
from fastai.vision.data import ImageBlock
from monai.losses import DiceCELoss

from fastmed.io import write_nifti
from fastmed.core import MedImage
from fastmed.data import MedDataBlock, MedMaskBlock
from fastmed.losses import CustomLoss
from fastmed.metrics import AccumulatedDice
from fastmed.patches import patch_dataloaders, SlidingWindowValidation
from fastmed.checkpoint import CheckpointCallback, load_checkpoint
from fastmed.distributed import DistributedError, ShardOrder, distributed_ctx, launch, rank_and_world

pytestmark = pytest.mark.timeout(120)
N_TRAIN, N_VALID = 4, 3  # 3 validation cases: the two ranks hold 2 and 1 of them


@pytest.fixture(scope='module')
def cases(tmp_path_factory):
    "A table of 7 (image, mask) NIfTI files of 16³ voxels: a bright cube in noise."
    work, rows = tmp_path_factory.mktemp('cases'), []
    for i in range(N_TRAIN + N_VALID):
        rng = np.random.default_rng(i)
        m = np.zeros((16, 16, 16), np.uint8); a = rng.integers(2, 7, 3); m[a[0]:a[0]+7, a[1]:a[1]+7, a[2]:a[2]+7] = 1
        x = m + rng.normal(0, 0.3, m.shape).astype(np.float32)
        rows.append((str(write_nifti(work/f'img{i}.nii.gz', x, np.eye(4))),
                     str(write_nifti(work/f'msk{i}.nii.gz', m, np.eye(4), dtype=np.uint8))))
    return pd.DataFrame(rows, columns=['img', 'mask'])


def make_learner(df, bs, patches=False):
    "Whole-volume (or 8³-patch) segmentation learner; the same initial weights in every process."
    dls = MedDataBlock(blocks=(ImageBlock(cls=MedImage), MedMaskBlock), get_x=ColReader('img'), get_y=ColReader('mask'),
                       splitter=IndexSplitter(list(range(N_TRAIN, N_TRAIN + N_VALID)))).dataloaders(df, bs=bs, num_workers=0)
    if patches: dls = patch_dataloaders(dls, 8, samples_per_volume=2, bs=bs, queue_length=16)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 2, 1))
    return Learner(dls, net, loss_func=CustomLoss(DiceCELoss(to_onehot_y=True, softmax=True)), opt_func=SGD, lr=0.05,
                   metrics=[AccumulatedDice(2)], cbs=[SlidingWindowValidation(8)] if patches else [])


class Probe(Callback):
    "Records the items each epoch read on this rank and the gradients after the first step."
    order = 90
    def before_fit(self): self.train_idx, self.valid_idx, self.volumes, self.grads = [], [], [], None
    def before_train(self):
        if hasattr(self.dl.dataset, 'subjects_dataset'): self.volumes.append(list(self.dl.dataset.subjects_dataset.items.indices))
        else: self.train_idx.append(list(self.dl.get_idxs()))
    def before_validate(self): self.valid_idx.append(list(self.dl.get_idxs()))
    def after_backward(self):
        if self.grads is None: self.grads = [p.grad.flatten().tolist() for p in self.learn.model.parameters()]


def dump(out, learn, probe, **extra):
    rank = rank_and_world()[0]
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, probe.grads)
    Path(out, f'rank{rank}.json').write_text(json.dumps(dict(
        train_idx=probe.train_idx, valid_idx=probe.valid_idx, volumes=probe.volumes, grads_all_ranks=everyone,
        values=[list(map(float, v)) for v in learn.recorder.values], **extra)))
    if rank == 0: save_file({k: v.contiguous() for k, v in learn.model.state_dict().items()}, str(Path(out)/'weights.safetensors'))


def fit_worker(df, out, bs, patches, epochs):
    learn, probe = make_learner(df, bs, patches), Probe()
    ckpt = CheckpointCallback(Path(out)/f'ckpt_rank{rank_and_world()[0]}.safetensors')
    with distributed_ctx(learn, seed=1), learn.no_bar(), learn.no_logging(): learn.fit(epochs, cbs=[probe, ckpt])
    dump(out, learn, probe)


def read(out): return [json.loads(Path(out, f'rank{r}.json').read_text()) for r in range(2)]


def test_two_ranks_match_one_process(cases, tmp_path):
    "Whole volumes, 2 × batch 1 against 1 × batch 2 over the same item order: same weights, metrics, gradients."
    t0 = time.monotonic()
    launch(fit_worker, 2, cases, tmp_path, 1, False, 2, start_method='fork', timeout=60)
    ranks = read(tmp_path)
    g0, g1 = ranks[0]['grads_all_ranks']
    for a, b in zip(g0, g1): np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)  # DDP averaged them
    for epoch in range(2):  # each training case once per epoch; validation cases once, unpadded
        seen = ranks[0]['train_idx'][epoch] + ranks[1]['train_idx'][epoch]
        assert sorted(seen) == list(range(N_TRAIN))
        assert sorted(ranks[0]['valid_idx'][epoch] + ranks[1]['valid_idx'][epoch]) == list(range(N_VALID))
    assert ranks[0]['train_idx'][0] != ranks[0]['train_idx'][1], "a new order each epoch"
    assert ranks[0]['values'] == ranks[1]['values'], "every rank prints the gathered metrics"
    assert (tmp_path/'ckpt_rank0.safetensors').is_file() and not (tmp_path/'ckpt_rank1.safetensors').exists()

    one, probe = make_learner(cases, 2), Probe()  # one process, batch 2, the same order (ShardOrder for a world of 1)
    with distributed_ctx(one, seed=1), one.no_bar(), one.no_logging(): one.fit(2, cbs=probe)
    assert [sorted(i) for i in probe.train_idx] == [list(range(N_TRAIN))] * 2
    two = load_file(str(tmp_path/'weights.safetensors'))
    for k, v in one.model.state_dict().items(): torch.testing.assert_close(two[k], v, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ranks[0]['values'][-1][1:], one.recorder.values[-1][1:], rtol=1e-4)  # valid loss, Dice
    assert time.monotonic() - t0 < 60


def test_patch_queues_sharded_and_dice_exact(cases, tmp_path):
    "Patch training: each rank's queue holds half the volumes; the printed Dice is the Dice of all validation voxels."
    launch(fit_worker, 2, cases, tmp_path, 2, True, 1, start_method='fork', timeout=60)
    ranks = read(tmp_path)
    shards = [r['volumes'][0] for r in ranks]
    assert sorted(shards[0] + shards[1]) == list(range(N_TRAIN)) and len(set(shards[0]) & set(shards[1])) == 0
    one = make_learner(cases, 2, patches=True)
    one.model.load_state_dict(load_file(str(tmp_path/'weights.safetensors')))
    with one.no_bar(): loss, dice = one.validate()
    np.testing.assert_allclose(ranks[0]['values'][-1][1:], [loss, dice], rtol=1e-5)


class Stop(Callback):
    "Ends the fit after `n` epochs (after the checkpoint), on every rank: a run cut short, to resume."
    order = 70
    def __init__(self, n): self.n = n
    def after_epoch(self):
        if self.epoch + 1 >= self.n: raise CancelFitException


def resume_worker(df, out, stop):
    learn, probe = make_learner(df, 1), Probe()
    ckpt = CheckpointCallback(Path(out)/'ckpt.safetensors', resume=True)
    with distributed_ctx(learn, seed=1), learn.no_bar(), learn.no_logging():
        learn.fit(3, cbs=[probe, ckpt] + ([Stop(stop)] if stop else []))
    dump(out, learn, probe)


def test_resume(cases, tmp_path):
    "A 3-epoch run stopped after epoch 1 resumes at epoch 1 on both ranks and ends with a 3-epoch checkpoint."
    launch(resume_worker, 2, cases, tmp_path, 1, start_method='fork', timeout=60)
    assert load_checkpoint(make_learner(cases, 1), tmp_path/'ckpt.safetensors')['epoch'] == 1
    launch(resume_worker, 2, cases, tmp_path, 0, start_method='fork', timeout=60)
    ranks = read(tmp_path)
    assert [len(r['train_idx']) for r in ranks] == [2, 2], "epochs 1 and 2 trained, epoch 0 skipped"
    assert load_checkpoint(make_learner(cases, 1), tmp_path/'ckpt.safetensors')['epoch'] == 3


class Die(Callback):
    "Rank 1 dies (SIGKILL) or hangs at its second training batch."
    order = 90
    def __init__(self, how): self.how = how
    def after_batch(self):
        if rank_and_world()[0] != 1 or not self.training or self.iter != 1: return
        if self.how == 'kill': os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(600)


def failing_worker(df, how):
    learn = make_learner(df, 1)
    with distributed_ctx(learn), learn.no_bar(), learn.no_logging(): learn.fit(2, cbs=Die(how))


@pytest.mark.parametrize('how,expected', [  # a kill may first show as rank 0's lost connection: PyTorch reports the first exit it sees
    ('kill', r'rank 1 of 2 died \(process 1 terminated with signal SIGKILL\)|rank 0 of 2 failed: .*(Connection|closed|reset)'),
    ('hang', r'rank 0 of 2 waited longer than the process-group timeout \(5 s\)')])
def test_failed_rank_ends_the_run(cases, how, expected):
    "A killed rank, or one that hangs past the process-group timeout, ends the run with a clear error, not a hang."
    t0 = time.monotonic()
    with pytest.raises(DistributedError, match=expected) as e:
        launch(failing_worker, 2, cases, how, start_method='fork', timeout=5)
    assert 'the other ranks were stopped' in str(e.value)
    assert time.monotonic() - t0 < 40


def test_cli_nproc_and_track(tmp_path):
    "`fastmed train DATA -o OUT --nproc 2 --track`: one fold trained on 2 ranks, scored, and logged to the local MLflow store."
    pytest.importorskip('mlflow')
    from mlflow import MlflowClient
    from fastmed.train import make_spheres_dataset, train_main
    from fastmed.tracking import local_store
    data, out = make_spheres_dataset(tmp_path/'balls', n=6), tmp_path/'run'
    torch.manual_seed(0)
    rc = train_main([str(data), '-o', str(out), '--epochs', '1', '--folds', '2', '--fold', '0', '--nproc', '2', '--track',
                     '-q', '--device', 'cpu'])
    assert rc == 0
    assert sorted(p.name for p in (out/'fold_0').iterdir()) == ['checkpoint.safetensors', 'history.csv', 'model.json',
                                                               'model.safetensors', 'validation.csv']
    assert (out/'cv_dice.csv').is_file()
    history = pd.read_csv(out/'fold_0'/'history.csv')
    client = MlflowClient(local_store(out/'mlruns')[0])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_name for r in runs] == ['fold_0'] and runs[0].info.status == 'FINISHED'
    np.testing.assert_allclose(runs[0].data.metrics['dice_mean'], history.dice_mean.iloc[-1], rtol=1e-6)
    assert {f.path for f in client.list_artifacts(runs[0].info.run_id, 'model')} == {'model/model.json', 'model/model.safetensors'}
