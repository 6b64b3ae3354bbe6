"""Issue 13 end to end on a tiny synthetic data set (nnU-Net layout: imagesTr/<case>_0000, labelsTr/, dataset.json):

- `fastmed plan` then `fastmed train` (2 folds, 1 epoch each) through their entry points `plan_main`/`train_main`,
  then prediction with the fold ensemble (`load_ensemble` + `predict_volume`; `fastmed predict FOLDER` adds the plan's
  flip TTA and the post-processing the cross-validation chose);
- a training process killed with SIGKILL in the middle of a fold resumes from its last epoch when the same command
  is run again, keeping the epochs it had done; `fastmed plan` and `fastmed train` show progress bars (without -q).
"""
import contextlib, io, json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fastmed.core import MedImage, MedMask
from fastmed.inference import predict_volume
from fastmed.plan import load_plan, plan_main
from fastmed.cli import main as cli_main
from fastmed.train import make_spheres_dataset, train_main, load_ensemble, largest_component_labels, predict_trained
from fastmed.postprocess import keep_largest_component
from fastmed.checkpoint import _read_checkpoint


def _run(main, *argv):
    "(status, stdout, stderr) of an entry point called as the command line would."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def _dice(a, b, label):
    a, b = a == label, b == label
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_plan_train_predict_two_folds(tmp_path):
    torch.manual_seed(0)
    data = make_spheres_dataset(tmp_path/'balls', n=6, seed=1)
    status, out, err = _run(plan_main, data, '-o', tmp_path/'plan', '--folds', '2', '--epochs', '1', '--device', 'cpu',
                            '--base-filters', '8', '-q')
    assert (status, err) == (0, ''), err
    assert 'bright' in out and 'plan written to' in out
    edited = json.loads((tmp_path/'plan'/'plan.json').read_text())
    edited['training']['lr'] = 0.01  # plan.json is meant to be edited: a higher rate for one short epoch
    (tmp_path/'plan'/'plan.json').write_text(json.dumps(edited, indent=1))
    status, out, err = _run(train_main, tmp_path/'plan'/'plan.json', '-o', tmp_path/'run', '-q')
    assert (status, err) == (0, ''), err

    run = tmp_path/'run'
    table = pd.read_csv(run/'cv_dice.csv', index_col=0)
    assert list(table.index) == ['0', '1', 'mean', 'sd'] and list(table.columns) == ['bright', 'dim', 'mean']
    assert table.loc['mean', 'bright'] > 0.5, table  # one short epoch finds the bright ball
    plan = load_plan(run/'plan.json')
    assert plan.postprocessing['folds'] == [0, 1] and set(plan.postprocessing['keep_largest']) == {'1', '2'}
    assert len(list((run/'cv_predictions').glob('*.nii.gz'))) == 6  # every case predicted out of fold once
    for fold in (0, 1):
        hist = pd.read_csv(run/f'fold_{fold}'/'history.csv')
        assert list(hist.epoch) == [0] and hist.dice_bright.notna().all()

    models = load_ensemble(run)
    assert len(models) == 2
    case = plan.cases[1]  # an LPS case (orientations alternate RAS, LPS)
    source, truth = MedImage.create(case['images'][0]), MedMask.create(case['label'])
    assert source.orientation == 'LPS'
    pred = predict_volume(models, case['images'][0])
    assert pred.shape == truth.shape and np.allclose(pred.affine, source.affine)
    p, t = (m.as_subclass(torch.Tensor).numpy() for m in (pred, truth))
    assert _dice(p, t, 1) > 0.5, _dice(p, t, 1)
    assert set(largest_component_labels(run)) <= {1, 2}

    # the same three steps through the `fastmed` command: predict takes the trained folder (the fold ensemble), with
    # the plan's flip TTA and the largest-component clean-up of the labels the cross-validation chose it for
    status, out, err = _run(cli_main, 'predict', run, case['images'][0], '-o', tmp_path/'preds', '-q')
    assert (status, err) == (0, ''), err
    cli_pred = MedMask.create(tmp_path/'preds'/pd.read_csv(tmp_path/'preds'/'volumes.csv').output[0])
    assert plan.inference['tta'] is True
    planned = keep_largest_component(predict_volume(models, case['images'][0], tta=True), labels=largest_component_labels(run))
    assert torch.equal(cli_pred.as_subclass(torch.Tensor), planned.as_subclass(torch.Tensor))
    assert torch.equal(predict_trained(run, case['images'][0]).as_subclass(torch.Tensor), planned.as_subclass(torch.Tensor))
    with pytest.raises(SystemExit) as exit_: _run(cli_main, 'plan', '--help')  # plan's own parser answers
    assert exit_.value.code == 0


SCRIPT = textwrap.dedent('''
    import sys, torch
    torch.manual_seed(0); torch.set_num_threads(1)
    from fastmed.train import train_main
    sys.exit(train_main(sys.argv[1:]))
''')


@pytest.mark.skipif(not hasattr(signal, 'SIGKILL'), reason='needs SIGKILL')
def test_killed_training_resumes(tmp_path):
    data = make_spheres_dataset(tmp_path/'balls', n=4, seed=2)
    status, out, err = _run(plan_main, data, '-o', tmp_path/'plan', '--folds', '2', '--epochs', '4', '--device', 'cpu',
                            '--base-filters', '4')
    assert status == 0, err
    assert '100.00% [4/4' in out, out[:2000]  # the fingerprint's progress bar, one step per case
    (tmp_path/'train.py').write_text(SCRIPT)
    run = tmp_path/'run'
    argv = [sys.executable, str(tmp_path/'train.py'), str(tmp_path/'plan'/'plan.json'), '-o', str(run), '--fold', '0', '-q']
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    history, checkpoint = run/'fold_0'/'history.csv', run/'fold_0'/'checkpoint.safetensors'
    try:
        t0 = time.time()
        while not checkpoint.is_file():  # epoch 0 done (history, then checkpoint written): kill inside epoch 1
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.time() - t0 < 180, 'no epoch finished in 180 s'
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None: proc.kill()
    assert proc.returncode == -signal.SIGKILL
    before = pd.read_csv(history)
    saved = _read_checkpoint(run/'fold_0'/'checkpoint.safetensors')[0]['epoch']
    assert 1 <= saved <= 2 and not (run/'fold_0'/'model.json').exists()
    assert not [p.name for p in (run/'fold_0').iterdir() if p.name.startswith('.')]  # no partial temp files

    done = subprocess.run(argv[:-1], capture_output=True, text=True, env=env, timeout=300)  # again, without -q
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert 'train_loss' in done.stdout and 'dice_bright' in done.stdout, done.stdout[-2000:]  # fastai's epoch table
    assert '100.00%' in done.stdout, done.stdout[-2000:]  # and its progress bars
    after = pd.read_csv(history)
    assert list(after.epoch) == [0, 1, 2, 3]
    kept = before[before.epoch < saved]
    pd.testing.assert_frame_equal(after.iloc[:len(kept)], kept)  # the epochs done before the kill were not trained again
    assert _read_checkpoint(run/'fold_0'/'checkpoint.safetensors')[0]['epoch'] == 4
    assert (run/'fold_0'/'model.json').is_file() and (run/'fold_0'/'validation.csv').is_file()
    assert after.seconds.is_monotonic_increasing
