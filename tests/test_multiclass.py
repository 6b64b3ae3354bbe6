"""A 3-label segmentation trained end to end on CPU: DiceCE through `CustomLoss`, per-class Dice and HD95 every
epoch, `show_results`, per-case interpretation, flip TTA, and the mixed-precision code path of losses and metrics."""
import warnings
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial.transform import Rotation
from fastai.callback.fp16 import MixedPrecision
from fastmed.vision_all import *
from fastmed.interpret import SegmentationInterpretation, tta_segmentation

SHAPE, N_CASES, INTENSITIES = (32, 32, 32), 20, (0., 100., 200., 300.)


def _nested_ellipsoids(shape, affine, rng):
    "Image and 3-label mask: a rotated ellipsoid (label 1) holding two nested, scaled copies (labels 2, 3)."
    ijk = np.indices(shape, dtype=float).reshape(3, -1)
    world = affine[:3, :3] @ ijk + affine[:3, 3:]
    fov = np.array(shape) * np.linalg.norm(affine[:3, :3], axis=0)
    centre = world.mean(1, keepdims=True) + rng.uniform(-3, 3, (3, 1))
    q = Rotation.random(random_state=rng).as_matrix().T @ (world - centre)
    d = np.sqrt((((q / (rng.uniform(0.28, 0.36, 3) * fov.min())[:, None]) ** 2).sum(0))).reshape(shape)
    mask = (d <= 1).astype(np.uint8) + (d <= 0.72) + (d <= 0.42)
    img = np.asarray(INTENSITIES)[mask] + rng.normal(0, 15, shape)
    return img.astype(np.float32), mask.astype(np.uint8)


@pytest.fixture(scope='module', autouse=True)
def one_torch_thread():
    "One intra-op thread: 32³ volumes gain nothing from two, and on a shared 2-core machine two threads ran 10× slower."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def cases(tmp_path_factory):
    "20 cases of 32³ at 1.5 mm, in RAS, LPS and oblique grids."
    folder, rows = tmp_path_factory.mktemp('multiclass'), []
    for i in range(N_CASES):
        affine = make_affine((1.5, 1.5, 1.5), ('RAS', 'LPS', 'oblique')[i % 3], shape=SHAPE)
        img, mask = _nested_ellipsoids(SHAPE, affine, np.random.default_rng([7, i]))
        rows.append(dict(image=str(write_nifti(folder / f'case{i:02d}.nii.gz', img, affine)),
                         label=str(write_nifti(folder / f'case{i:02d}_label.nii.gz', mask, affine, dtype=np.uint8)),
                         binary=str(write_nifti(folder / f'case{i:02d}_binary.nii.gz', mask > 0, affine, dtype=np.uint8))))
    return pd.DataFrame(rows)


def _dls(df, label_col='label', bs=1, device=None):
    dblock = MedDataBlock(blocks=(ImageBlock(cls=MedImage), MedMaskBlock), get_x=ColReader('image'), get_y=ColReader(label_col),
                          splitter=RandomSplitter(valid_pct=0.2, seed=0), item_tfms=[PadOrCrop(32), ZNormalization()],
                          reorder=True)
    return dblock.dataloaders(df, bs=bs, val_bs=4, device=device)


def _learner(dls, out_channels=4, metrics=(multi_dice_score, multi_hausdorff_distance), **kwargs):
    model = UNet(spatial_dims=3, in_channels=1, out_channels=out_channels, channels=(8, 16, 32), strides=(2, 2),
                 num_res_units=1)
    return Learner(dls, model, loss_func=CustomLoss(DiceCELoss(to_onehot_y=True, softmax=True)), metrics=list(metrics), **kwargs)


EPOCHS = 8


@pytest.fixture(scope='module')
def trained(cases):
    "The 3-label UNet after EPOCHS epochs of batches of one (more steps per epoch: Dice ~0.95 per class)."
    torch.manual_seed(0)
    learn = _learner(_dls(cases))
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(EPOCHS, 1e-2)
    return learn


def test_recorder_has_per_class_dice_and_hd95_each_epoch(trained):
    names = trained.recorder.metric_names
    assert list(names[1:5]) == ['train_loss', 'valid_loss', 'multi_dice_score', 'multi_hausdorff_distance'], names
    assert len(trained.recorder.values) == EPOCHS
    for epoch in trained.recorder.values:
        dice, hd95 = epoch[2], epoch[3]
        assert dice.shape == (3,) and hd95.shape == (3,), (dice, hd95)
    dice, hd95 = trained.recorder.values[-1][2:4]
    assert torch.isfinite(dice).all() and torch.isfinite(hd95).all(), (dice, hd95)


def test_final_mean_per_class_dice(trained):
    loss, dice, hd95 = trained.validate()
    assert dice.mean() > 0.6 and dice.min() > 0.4, dice
    assert (hd95 >= 0).all() and (hd95 < 10).all(), hd95


def test_show_results_draws_image_target_and_prediction(trained):
    trained.show_results(max_n=2)
    axes = plt.gcf().axes
    assert len(axes) == 4
    assert [len(ax.images) for ax in axes] == [2, 2, 2, 2]  # image + target, image + prediction, per case
    assert [ax.get_title() for ax in axes] == ['target', 'prediction'] * 2
    plt.close('all')


def test_segmentation_interpretation_table(trained, cases):
    interp = SegmentationInterpretation.from_learner(trained)
    m = interp.metrics
    n_valid = len(trained.dls.valid_ds)
    assert len(m) == n_valid == 4
    assert list(m.index) == list(trained.dls.valid.items.index)
    assert [c for c in m.columns if c.startswith('dice_') and c != 'dice_mean'] == ['dice_1', 'dice_2', 'dice_3']
    hd = m[['hd95_1', 'hd95_2', 'hd95_3']].values
    assert np.isfinite(hd).all(), hd
    probs, targs = trained.get_preds()
    voxel_hd = [multi_hausdorff_distance(probs[i:i + 1].log(), targs[i:i + 1]).numpy() for i in range(n_valid)]
    np.testing.assert_allclose(hd, 1.5 * np.array(voxel_hd), rtol=1e-4)  # mm at 1.5 mm, not voxels
    true_ml = [(np.asarray(MedMask.create(cases.label[i])) == 1).sum() * 1.5 ** 3 / 1000 for i in m.index]
    np.testing.assert_allclose(m.vol_true_1.values, true_ml, rtol=1e-5)
    axs = interp.plot_worst(k=2)
    assert axs.shape == (2, 3)
    interp.plot_dice_boxplot()
    plt.close('all')


def test_flip_tta_shapes_and_agreement(trained):
    mean, std, targs = tta_segmentation(trained)
    plain, plain_targs = trained.get_preds()
    assert mean.shape == std.shape == plain.shape == (4, 4, 32, 32, 32)
    assert targs.shape == (4, 1, 32, 32, 32) and torch.equal(targs, plain_targs)
    torch.testing.assert_close(mean.sum(1), torch.ones(4, 32, 32, 32), atol=1e-5, rtol=0)
    assert (std >= 0).all() and std.max() <= 0.5
    agree = (mean.argmax(1) == plain.argmax(1)).float().mean()
    assert agree > 0.95, agree


class _CPUBFloat16(MixedPrecision):
    "fastai's MixedPrecision with a CPU bfloat16 autocast: fastai's own always opens a CUDA autocast."
    def before_fit(self):
        super().before_fit()
        self.autocast = torch.autocast('cpu', dtype=torch.bfloat16)


def _fit_one_epoch(learn):
    dtypes = set()
    hook = learn.model.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # fastai's CUDA autocast/GradScaler on a CPU-only machine warn and disable
        with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    hook.remove()
    return dtypes


@pytest.mark.parametrize('precision', ['to_fp16', 'cpu_bf16'])
def test_mixed_precision_multiclass_epoch_is_finite(cases, trained, precision):
    learn = _learner(_dls(cases, bs=4, device=None if precision == 'to_fp16' else 'cpu'))
    learn.model.load_state_dict(trained.model.state_dict())  # a trained model: every class predicted, HD95 defined
    learn = learn.to_fp16() if precision == 'to_fp16' else learn.add_cb(_CPUBFloat16('bf16'))
    dtypes = _fit_one_epoch(learn)
    # fastai's to_fp16 autocasts on CUDA only: float16 on a GPU, float32 (autocast disabled) on a CPU-only machine
    expected = torch.bfloat16 if precision == 'cpu_bf16' else torch.float16 if torch.cuda.is_available() else torch.float32
    assert dtypes == {expected}, dtypes
    train_loss, valid_loss, dice, hd95 = learn.recorder.values[-1][:4]
    assert np.isfinite([train_loss, valid_loss]).all(), (train_loss, valid_loss)
    assert dice.shape == hd95.shape == (3,) and torch.isfinite(dice).all() and torch.isfinite(hd95).all(), (dice, hd95)
    assert dice.mean() > 0.6, dice


def test_mixed_precision_binary_metrics_are_finite(cases):
    torch.manual_seed(0)
    learn = _learner(_dls(cases, label_col='binary', bs=4, device='cpu'), out_channels=2,
                     metrics=(binary_dice_score, binary_hausdorff_distance, multi_dice_score, multi_hausdorff_distance))
    assert _fit_one_epoch(learn.add_cb(_CPUBFloat16('bf16'))) == {torch.bfloat16}
    values = learn.recorder.values[-1]
    assert np.isfinite(np.concatenate([np.ravel(np.asarray(v, dtype=float)) for v in values[:6]])).all(), values
