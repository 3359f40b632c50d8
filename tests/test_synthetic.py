from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from pathoseg.data import load_dataset
from pathoseg.data.synthetic import SyntheticConfig, synthetic_sample


def test_deterministic_by_seed():
    a_img, a_lab = synthetic_sample(5)
    b_img, b_lab = synthetic_sample(5)
    c_img, _ = synthetic_sample(6)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)


def test_gland_properties():
    cfg = SyntheticConfig()
    sizes = []
    for seed in range(8):
        image, labels = synthetic_sample(seed, cfg)
        ids = np.unique(labels[labels > 0])
        assert cfg.glands[0] <= len(ids) <= cfg.glands[1]
        assert ids.tolist() == list(range(1, len(ids) + 1))
        # glands never touch: each dilated gland meets no other gland
        for i in ids:
            ring = ndi.binary_dilation(labels == i, iterations=2) & (labels != i)
            assert not (labels[ring] > 0).any()
        sizes += [int((labels == i).sum()) for i in ids]
        fg, bg = image[labels > 0].astype(float), image[labels == 0].astype(float)
        # H&E-like: stroma pink (red > green), glands hold dark purple nuclei and pale lumens
        assert bg[:, 0].mean() > bg[:, 1].mean() + 20
        assert (fg.sum(1) < 400).mean() > 0.01
        assert (fg.min(1) > 215).mean() > 0.05
    assert max(sizes) > 3 * min(sizes)  # varied gland size


def test_written_folder_loads(synth_dir):
    data = load_dataset(synth_dir)
    assert data.kind == "folder" and len(data) == 12
    image, labels = data.samples[0].load()
    assert image.shape == (96, 128, 3) and labels.max() >= 1
