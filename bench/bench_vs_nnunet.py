"""fastmed's self-configuring training against nnU-Net v2 on MSD Task04 Hippocampus: the same fold-0 split, the same
CPU wall-clock training budget, both started at the same moment.

Not part of `make test` or `python -m bench`: run it by hand and record the result in research/hippocampus and in
bench/README.md ("Recorded results"). nnU-Net v2 is a benchmark-only tool, not a fastmed dependency; install it into
the environment first (tested with nnunetv2 2.8.1):

    pip install nnunetv2
    python bench/bench_vs_nnunet.py --data ../shared/data/msd-hippocampus --work /tmp/hippo_bench --budget 25m

Steps (`--step prepare|train|report`, default all three):

1. prepare (before the clock starts; its times are printed):
   - fastmed plans the data set (`plan_dataset`: fingerprint, 5 folds, `--budget` as the time budget) and caches the
     preprocessed volumes;
   - nnU-Net gets its raw layout (`imagesTr/<case>_0000.nii.gz` and `labelsTr/<case>.nii.gz` as symlinks to the data,
     and a `dataset.json`), runs `nnUNetv2_plan_and_preprocess -c 3d_fullres`, and its `splits_final.json` is set to
     fastmed's 5 folds, so that fold 0 holds out the same 40 cases for both.
2. train (timed): two processes started together, each with one torch thread and no augmentation worker process
   (`nnUNet_n_proc_DA=0`), so that they share the machine equally:
   - fastmed: `fastmed.train.train_main([plan.json, -o, ..., --fold, 0])`, the plan's time-budget schedule, then its
     out-of-fold prediction of the 40 validation cases (native space, flip TTA);
   - nnU-Net: its default 3d_fullres trainer (`nnUNetTrainer`: the planned network, patch, batch size and
     augmentation, SGD with its poly learning rate, deep supervision) with the one change a time budget needs: epochs
     of 5 iterations (1 validation batch), and after every epoch the number of epochs is refitted to what the budget
     allows (the poly curve stretched to it), as the `nnUNetTrainer_Xepochs` variants fix it in advance. Then its
     own final validation of the 40 cases (sliding window, mirroring TTA), as `nnUNetv2_train` runs it.
3. report: Dice per label of both on the 40 cases, computed by one function (`fastmed.train.dice_per_label`) from the
   predictions each wrote in native space, without post-processing; and the time at which fastmed's per-epoch
   validation Dice (whole volumes, sliding window, no TTA) first reaches nnU-Net's final mean Dice. Written to
   `<work>/results.json`.
"""
import argparse, json, os, shutil, subprocess, sys, time
from pathlib import Path

import numpy as np
import pandas as pd

DATASET = 'Dataset004_Hippocampus'
LABELS = {'background': 0, 'Anterior': 1, 'Posterior': 2}


def _env(work: Path) -> dict:
    "Environment of both training processes: nnU-Net's folders, one thread, no worker processes."
    nn = work/'nnunet'
    return {**os.environ, 'nnUNet_raw': str(nn/'raw'), 'nnUNet_preprocessed': str(nn/'preprocessed'),
            'nnUNet_results': str(nn/'results'), 'nnUNet_n_proc_DA': '0', 'nnUNet_def_n_proc': '1',
            'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}


# ---------------------------------------------------------------- 1. prepare

def prepare_fastmed(data: Path, work: Path, budget: float):
    "Plan the data set with fastmed (5 folds, time budget) and cache its preprocessed volumes."
    from fastmed.plan import plan_dataset
    from fastmed.train import preprocess_cases
    plan = plan_dataset(data, work/'fastmed_plan', folds=5, time_budget=budget, device='cpu', progress=False)
    preprocess_cases(plan, work/'fastmed'/'cache', progress=False)
    return plan


def nnunet_raw(plan, work: Path) -> Path:
    "nnU-Net's raw layout of the plan's cases: symlinks with the `_0000` channel suffix, and dataset.json."
    raw = work/'nnunet'/'raw'/DATASET
    for sub in ('imagesTr', 'labelsTr'): (raw/sub).mkdir(parents=True, exist_ok=True)
    for c in plan.cases:
        for src, dst in ((c['images'][0], raw/'imagesTr'/f"{c['case']}_0000.nii.gz"), (c['label'], raw/'labelsTr'/f"{c['case']}.nii.gz")):
            if not dst.exists(): dst.symlink_to(Path(src).resolve())
    meta = dict(name='Hippocampus', channel_names={'0': 'MRI'}, labels=LABELS, numTraining=len(plan.cases), file_ending='.nii.gz')
    (raw/'dataset.json').write_text(json.dumps(meta, indent=1))
    return raw


def prepare_nnunet(plan, work: Path):
    "Raw layout, `nnUNetv2_plan_and_preprocess -c 3d_fullres`, and fastmed's folds as nnU-Net's splits_final.json."
    nnunet_raw(plan, work)
    tool = Path(sys.executable).parent/'nnUNetv2_plan_and_preprocess'
    env = {**_env(work), 'nnUNet_n_proc_DA': '1'}  # its planner sets torch's threads to this number (0 is refused)
    subprocess.run([str(tool), '-d', '4', '-c', '3d_fullres', '-np', '1', '--verify_dataset_integrity'], check=True,
                   env=env, stdout=open(work/'nnunet_prepare.log', 'w'), stderr=subprocess.STDOUT)
    cases = [c['case'] for c in plan.cases]
    splits = [dict(train=sorted(set(cases) - set(v)), val=sorted(v)) for v in plan.folds['validation']]
    (work/'nnunet'/'preprocessed'/DATASET/'splits_final.json').write_text(json.dumps(splits, indent=1))


def prepare(data: Path, work: Path, budget: float) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time(); plan = prepare_fastmed(data, work, budget); t1 = time.time()
    prepare_nnunet(plan, work); t2 = time.time()
    times = dict(fastmed_prepare_s=round(t1 - t0, 1), nnunet_prepare_s=round(t2 - t1, 1), budget_s=budget)
    (work/'prepare.json').write_text(json.dumps(times))
    print(f"prepared: fastmed plan + cache {times['fastmed_prepare_s']} s, nnU-Net plan_and_preprocess {times['nnunet_prepare_s']} s")
    return times


# ---------------------------------------------------------------- 2. train

class BudgetSpent(Exception):
    "Raised between two nnU-Net epochs once the training budget is spent."


def budget_trainer(budget: float):
    "nnU-Net's default trainer with short epochs whose number is refitted to `budget` seconds after each epoch."
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class nnUNetTrainer_TimeBudget(nnUNetTrainer):
        # nnU-Net records its constructor's arguments by name (from this signature): keep the parent's names
        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict, device=torch.device('cuda')):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_iterations_per_epoch, self.num_val_iterations_per_epoch, self.num_epochs = 5, 1, 100000

        def on_train_start(self):
            super().on_train_start()
            self.budget_t0 = time.monotonic()

        def on_epoch_start(self):
            if self.current_epoch >= self.num_epochs: raise BudgetSpent
            super().on_epoch_start()

        def on_epoch_end(self):
            super().on_epoch_end()  # counts the epoch
            spent = time.monotonic() - self.budget_t0
            fits = max(self.current_epoch, int(budget * self.current_epoch // spent))  # epochs the budget holds
            self.num_epochs = self.lr_scheduler.max_steps = fits
            print(f"@@epoch {self.current_epoch} seconds {spent:.1f} planned_epochs {fits}", flush=True)

        def run_training(self):
            try: super().run_training()
            except BudgetSpent: self.on_train_end()

    return nnUNetTrainer_TimeBudget


def nnunet_worker(work: Path, budget: float):
    "Train nnU-Net fold 0 within `budget` seconds on the CPU, then run its final validation (in this process)."
    import torch
    torch.set_num_threads(1)
    pre = work/'nnunet'/'preprocessed'/DATASET
    plans, dataset_json = json.loads((pre/'nnUNetPlans.json').read_text()), json.loads((pre/'dataset.json').read_text())
    plans['continue_training'] = False  # what nnUNetv2_train's get_trainer_from_args adds for a fresh run
    trainer = budget_trainer(budget)(plans=plans, configuration='3d_fullres', fold=0, dataset_json=dataset_json,
                                     device=torch.device('cpu'))
    t0 = time.time(); trainer.run_training(); t1 = time.time()
    trainer.perform_actual_validation(False); t2 = time.time()
    (work/'nnunet_times.json').write_text(json.dumps(dict(train_s=round(t1 - t0, 1), validation_s=round(t2 - t1, 1),
                                                          epochs=trainer.current_epoch, output=str(trainer.output_folder))))


def fastmed_worker(work: Path):
    "Train fastmed fold 0 on its plan (time budget), then predict its 40 validation cases (in this process)."
    import torch
    torch.set_num_threads(1); torch.manual_seed(0)
    from fastmed.train import train_main
    t0 = time.time()
    status = train_main([str(work/'fastmed_plan'/'plan.json'), '-o', str(work/'fastmed'), '--fold', '0', '-q'])
    (work/'fastmed_times.json').write_text(json.dumps(dict(total_s=round(time.time() - t0, 1), status=status)))


def train(work: Path, budget: float):
    "Start both trainings at the same moment, wait for both."
    me = [sys.executable, str(Path(__file__).resolve()), '--work', str(work), '--budget', str(budget)]
    procs = {}
    for tool in ('fastmed', 'nnunet'):
        log = open(work/f'{tool}_train.log', 'w')
        procs[tool] = (subprocess.Popen(me + ['--worker', tool], env=_env(work), stdout=log, stderr=subprocess.STDOUT), time.time())
    for tool, (p, t0) in procs.items():
        p.wait()
        print(f"{tool}: exit {p.returncode} after {time.time() - t0:.0f} s (log {work/f'{tool}_train.log'})")


# ---------------------------------------------------------------- 3. report

def dice_table(pred_dir: Path, cases: list) -> pd.DataFrame:
    "Dice per validation case and label of the predictions in `pred_dir` (`<case>.nii.gz`, native space)."
    import torch
    from fastmed.core import MedMask
    from fastmed.train import dice_per_label
    rows = []
    for c in cases:
        p, t = (MedMask.create(f).as_subclass(torch.Tensor).numpy()[0] for f in (pred_dir/f"{c['case']}.nii.gz", c['label']))
        rows.append(dict(case=c['case'], **{f'label_{k}': v for k, v in dice_per_label(p, t, [1, 2]).items()}))
    return pd.DataFrame(rows)


def _first_time_reaching(history: pd.DataFrame, target: float):
    "(seconds, epoch) of the first epoch whose mean validation Dice reaches `target`, or None."
    hit = history[history.dice_mean >= target]
    return None if hit.empty else (float(hit.seconds.iloc[0]), int(hit.epoch.iloc[0]))


def _decoded(o):
    "A checkpoint's JSON skeleton with its key/value-list dicts turned back into dicts (tensors stay references)."
    if isinstance(o, dict) and '__dict__' in o: return {k: _decoded(v) for k, v in o['__dict__']}
    return [_decoded(v) for v in o] if isinstance(o, list) else o


def fastmed_steps(work: Path) -> int:
    "Optimizer steps fastmed took: the Adam step count stored in its last checkpoint's metadata."
    from safetensors import safe_open
    with safe_open(str(work/'fastmed'/'fold_0'/'checkpoint.safetensors'), framework='pt') as f:
        meta = json.loads(f.metadata()['fastmed_checkpoint'])
    state = _decoded(meta['opt'])['state']  # fastai's optimizer: one dict per parameter
    return int((state[0] if isinstance(state, list) else next(iter(state.values())))['step'])


def report(work: Path) -> dict:
    from fastmed.plan import load_plan
    plan = load_plan(work/'fastmed_plan'/'plan.json')
    cases = [c for c in plan.cases if c['case'] in set(plan.folds['validation'][0])]
    nn_times = json.loads((work/'nnunet_times.json').read_text())
    tables = {'fastmed': dice_table(work/'fastmed'/'cv_predictions', cases),
              'nnU-Net': dice_table(Path(nn_times['output'])/'validation', cases)}
    means = {k: {l: float(t[l].mean()) for l in ('label_1', 'label_2')} for k, t in tables.items()}
    for m in means.values(): m['mean'] = (m['label_1'] + m['label_2']) / 2
    history = pd.read_csv(work/'fastmed'/'fold_0'/'history.csv')
    reached = _first_time_reaching(history, means['nnU-Net']['mean'])
    out = dict(budget_s=json.loads((work/'prepare.json').read_text())['budget_s'], cases=len(cases), dice=means,
               fastmed_history=history[['epoch', 'seconds', 'dice_label_1', 'dice_label_2', 'dice_mean']].to_dict('records'),
               fastmed_reaches_nnunet=reached, nnunet=nn_times,
               optimizer_steps={'fastmed': fastmed_steps(work), 'nnU-Net': nn_times['epochs'] * 5},
               batch_size={'fastmed': plan.batch_size, 'nnU-Net': json.loads((work/'nnunet'/'preprocessed'/DATASET/'nnUNetPlans.json').read_text())['configurations']['3d_fullres']['batch_size']}, fastmed=json.loads((work/'fastmed_times.json').read_text()),
               prepare=json.loads((work/'prepare.json').read_text()), fastmed_plan=dict(
                   patch=plan.patch_size, batch=plan.batch_size, filters=plan.network['kwargs']['filters']))
    (work/'results.json').write_text(json.dumps(out, indent=1))
    print(pd.DataFrame(means).T.round(4).to_string())
    when = 'never' if reached is None else f"after {reached[0]:.0f} s (epoch {reached[1]})"
    print(f"fastmed's per-epoch validation Dice reaches nnU-Net's final mean Dice {means['nnU-Net']['mean']:.4f}: {when}")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', type=Path, help='MSD Task04 Hippocampus folder (imagesTr/, labelsTr/)')
    p.add_argument('--work', type=Path, required=True, help='folder for everything both tools write')
    p.add_argument('--budget', default='25m', help='training budget of each tool, e.g. 25m or 1500 (seconds)')
    p.add_argument('--step', choices=['prepare', 'train', 'report', 'all'], default='all')
    p.add_argument('--worker', choices=['fastmed', 'nnunet'], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from fastmed.plan import parse_duration
    budget = parse_duration(args.budget)
    if args.worker == 'nnunet': return nnunet_worker(args.work, budget)
    if args.worker == 'fastmed': return fastmed_worker(args.work)
    if args.step in ('prepare', 'all'): prepare(args.data, args.work, budget)
    if args.step in ('train', 'all'): train(args.work, budget)
    if args.step in ('report', 'all'): report(args.work)


if __name__ == '__main__':
    main()
