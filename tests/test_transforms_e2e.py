"""Every fastmed augmentation inside a fastai segmentation DataBlock over NIfTI phantoms: masks stay int64 labels
aligned with the image in training, validation items see only the deterministic transforms, and seeds reproduce."""
import numpy as np
import pandas as pd
import pytest
import torch
from fastai.data.transforms import ColReader, ColSplitter
from fastai.torch_core import set_seed
from fastai.vision.data import ImageBlock
from fastmed.core import MedImage
from fastmed.data import MedDataBlock, MedMaskBlock
from fastmed.io import write_nifti
from fastmed.synthetic import make_affine, make_segmentation_pair
from fastmed.transforms import *

SHAPE, SPACING, LABELS, SIZE = (30, 30, 22), (2., 2., 3.), {0, 1, 2}, 24


@pytest.fixture(scope='module')
def phantoms(tmp_path_factory):
    "8 image/mask pairs (2 nested labels, bright foreground) in RAS, LPS and oblique orientations; 2 for validation."
    root, rows = tmp_path_factory.mktemp('phantoms'), []
    for i in range(8):
        affine = make_affine(SPACING, ('RAS', 'LPS', 'oblique')[i % 3], shape=SHAPE)
        img, msk = make_segmentation_pair(SHAPE, affine, seed=i, n_labels=2)
        rows.append(dict(img=str(write_nifti(root / f'img{i}.nii.gz', img, affine)),
                         msk=str(write_nifti(root / f'msk{i}.nii.gz', msk, affine, dtype=np.uint8)), is_val=i >= 6))
    return pd.DataFrame(rows)


def _deterministic():
    return [CropOrPadForeground(SIZE), ZNormalization()]


def _augmentations():
    "Every random fastmed transform, at p=1, with magnitudes that keep the phantom recognisable."
    return [RandomAffine(scales=0.1, degrees=15, translation=2, p=1.), RandomFlip(axes=(0, 1, 2), p=1.),
            RandomElasticDeformation(num_control_points=5, max_displacement=4., p=1.),
            OneOf([RandomAffine(degrees=(0, 0, 0, 0, -20, 20), p=1.), RandomFlip(axes='AP', p=1.)], weights=[2, 1], p=1.),
            RandomAnisotropy(downsampling=(1.5, 2.5), p=1.), RandomMotion(degrees=3, translation=3, p=1.),
            RandomGhosting(intensity=(0.2, 0.4), p=1.), RandomSpike(intensity=(0.05, 0.1), p=1.),
            RandomBiasField(coefficients=0.05, p=1.), RandomBlur(std=(0, 1), p=1.), RandomGamma(p=1.),
            RandomNoise(std=(0, 5), p=1.)]


def _dls(df, item_tfms, bs=3):
    block = MedDataBlock(blocks=(ImageBlock(cls=MedImage), MedMaskBlock), splitter=ColSplitter('is_val'),
                         get_x=ColReader('img'), get_y=ColReader('msk'), item_tfms=item_tfms, reorder=True)
    return block.dataloaders(df, bs=bs, num_workers=0)


@pytest.fixture(scope='module')
def dls(phantoms):
    set_seed(0, reproducible=True)
    return _dls(phantoms, _deterministic()[:1] + _augmentations() + _deterministic()[1:])


def _brightest(x: torch.Tensor, n: int) -> torch.Tensor:
    "The `n` brightest voxels of `x` (X,Y,Z) after a 3³ mean filter: where a bright phantom's foreground is."
    x = torch.nn.functional.avg_pool3d(x[None, None].float(), 3, stride=1, padding=1, count_include_pad=False)[0, 0]
    return x > x.flatten().kthvalue(x.numel() - n).values


def _dice(a, b): return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def _plain(batch): return [t.as_subclass(torch.Tensor) for t in batch]


def test_every_augmentation_is_in_the_pipeline(dls):
    names = {type(t).__name__ for t in dls.train.after_item.fs}
    random = {'RandomAffine', 'RandomFlip', 'RandomElasticDeformation', 'RandomMotion', 'RandomGhosting', 'RandomSpike',
              'RandomBiasField', 'RandomBlur', 'RandomGamma', 'RandomNoise', 'RandomAnisotropy', 'OneOf'}
    assert random <= names, random - names
    assert all(t.split_idx == 0 for t in dls.train.after_item.fs if type(t).__name__ in random)


def test_training_batches_keep_aligned_int64_labels(dls):
    set_seed(1, reproducible=True)
    for epoch in range(2):
        for x, y in dls.train:
            assert x.shape[1:] == (1, SIZE, SIZE, SIZE) and y.shape == (x.shape[0], 1, SIZE, SIZE, SIZE)
            assert y.dtype == torch.int64
            assert set(y.unique().tolist()) <= LABELS
            for xi, yi in zip(_plain((x, y))[0], _plain((x, y))[1]):
                assert yi.sum() > 0
                dice = _dice(_brightest(xi[0], int((yi[0] > 0).sum())), yi[0] > 0)
                assert dice > 0.8, dice


def test_training_items_are_augmented_validation_items_are_not(dls, phantoms):
    item = dls.train.dataset[0]
    set_seed(0, reproducible=True)
    train_img, train_msk = _plain(dls.train.after_item(item))
    valid_img, valid_msk = _plain(dls.valid.after_item(item))
    plain_img, plain_msk = _plain(_dls(phantoms, _deterministic()).valid.after_item(item))
    assert not torch.equal(train_msk, valid_msk) and not torch.equal(train_img, valid_img)
    assert torch.equal(valid_msk, plain_msk) and torch.equal(valid_img, plain_img)
    assert valid_msk.dtype == train_msk.dtype == torch.int64


def test_validation_batches_identical_across_epochs(dls, phantoms):
    epochs = [[_plain(b) for b in dls.valid] for _ in range(2)]
    plain = [_plain(b) for b in _dls(phantoms, _deterministic()).valid]
    for got in epochs[1:] + [plain]:
        assert len(got) == len(epochs[0])
        assert all(torch.equal(a, b) for ba, bb in zip(epochs[0], got) for a, b in zip(ba, bb))
    assert all(y.dtype == torch.int64 and set(y.unique().tolist()) <= LABELS for _, y in epochs[0])


def test_fixed_seed_reproduces_training_batches(phantoms):
    def first_batch(seed):
        set_seed(seed, reproducible=True)  # before building: a DataLoader draws its shuffling seed when created
        return _plain(_dls(phantoms, _deterministic()[:1] + _augmentations() + _deterministic()[1:], bs=2).train.one_batch())
    first, again, other = first_batch(42), first_batch(42), first_batch(7)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])
