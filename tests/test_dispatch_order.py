"""fastmed's show/plot functions must win type dispatch whatever the import order (plum takes the later of two
equally ranked methods, so an import order that registered fastai's catch-all last used to hide ours)."""
import subprocess, sys

CHECK = """
import fastmed.data, fastai.interpret, fastai.vision.all
import numpy as np, torch
from fastmed.core import MedImage, MedMask, VolumeGeometry
from fastai.torch_core import TensorCategory
from fastai.interpret import plot_top_losses
from fastai.data.core import show_batch, show_results
g = VolumeGeometry.from_source(np.eye(4), (2, 2, 2))
x, m = MedImage.from_data(torch.zeros(1, 2, 2, 2), g), MedMask.from_data(torch.zeros(1, 2, 2, 2, dtype=torch.long), g)
y = TensorCategory(torch.tensor(1))
print(plot_top_losses.resolve_method((x, y, 1, 2, 3, 4))[0].__module__,
      show_batch.resolve_method((x, m, 1))[0].__module__, show_batch.resolve_method((x, y, 1))[0].__module__,
      show_results.resolve_method((x, m, 1, 2))[0].__module__, show_results.resolve_method((x, y, 1, 2))[0].__module__)
"""


def test_fastmed_show_functions_win_dispatch_when_imported_first():
    out = subprocess.run([sys.executable, '-c', CHECK], capture_output=True, text=True, check=True).stdout.split()
    assert out == ['fastmed.data'] * 5, out
