"""Metric functions on inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.evaluate import metrics


def test_psnr_identical_is_cap_and_known_mse():
    img = torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(0))
    assert metrics.psnr(img, img) == metrics.PSNR_CAP
    # constant offset 0.1 -> MSE 0.01 -> 20 dB
    a = torch.full((8, 8, 3), 0.5)
    assert metrics.psnr(a + 0.1, a) == pytest.approx(20.0, abs=1e-4)
    # uint8 range: MSE 1 at max 255 -> 48.13 dB
    u = np.zeros((4, 4), np.uint8)
    assert metrics.psnr(u + 1, u, max_val=255.0) == pytest.approx(20 * math.log10(255), abs=1e-6)


def test_ssim_identical_one_and_lower_for_noise():
    g = torch.Generator().manual_seed(1)
    img = torch.rand(32, 32, 3, generator=g)
    assert metrics.ssim(img, img) == pytest.approx(1.0, abs=1e-5)
    noisy = (img + 0.3 * torch.randn(32, 32, 3, generator=g)).clamp(0, 1)
    s = metrics.ssim(noisy, img)
    assert 0.0 < s < 0.8
    # SSIM is symmetric
    assert metrics.ssim(img, noisy) == pytest.approx(s, abs=1e-6)


def test_cosine_and_l2_on_known_features():
    e = torch.eye(4)
    assert metrics.cosine_distance(e, e) == pytest.approx(0.0, abs=1e-6)
    assert metrics.cosine_distance(e, e.roll(1, dims=0)) == pytest.approx(1.0, abs=1e-6)
    assert metrics.cosine_distance(e, -e) == pytest.approx(2.0, abs=1e-6)
    # L2 per dimension: rows differ by 2 in one of 4 dims -> 4 / 4 = 1
    assert metrics.l2_error(e, -e) == pytest.approx(1.0)
    assert metrics.l2_error(2 * e, e) == pytest.approx(0.25)


def test_feature_errors_respect_valid_mask_and_accumulate():
    pred = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # [1, 2, 2]
    tgt = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    valid = torch.tensor([[True, False]])
    assert metrics.cosine_distance(pred, tgt, valid) == pytest.approx(0.0)
    acc = metrics.FeatureErrors()
    acc.add(pred, tgt, valid)  # one cell, distance 0
    acc.add(pred, tgt)  # two cells, distances 0 and 1
    r = acc.result()
    assert r["cells"] == 3 and r["cosine"] == pytest.approx(1 / 3)
    assert r["l2"] == pytest.approx((0 + 0 + 1) / 3)


def test_iou_and_grounding_metrics_on_hand_made_masks():
    gt = np.zeros((4, 4), bool)
    gt[:2, :2] = True  # 4 pixels
    pred = np.zeros((4, 4), bool)
    pred[:2, :3] = True  # 6 pixels, 4 shared
    iou, inter, union = metrics.mask_iou(pred, gt)
    assert (iou, inter, union) == (pytest.approx(4 / 6), 4, 6)
    assert metrics.mask_iou(np.zeros((2, 2)), np.zeros((2, 2)))[0] == 1.0
    miss = np.zeros((4, 4), bool)
    miss[3, 3] = True  # IoU 0 with gt
    exact = gt.copy()  # IoU 1
    half = np.zeros((4, 4), bool)
    half[:2, :1] = True  # IoU 0.5 (2 / 4)
    r = metrics.grounding_metrics([(pred, gt), (miss, gt), (exact, gt), (half, gt)])
    assert r["samples"] == 4
    assert r["mIoU"] == pytest.approx((4 / 6 + 0 + 1 + 0.5) / 4)
    assert r["cIoU"] == pytest.approx((4 + 0 + 4 + 2) / (6 + 5 + 4 + 4))
    assert r["precision@0.5"] == pytest.approx(3 / 4)  # 0.667, 1.0, 0.5 (>= 0.5)
    assert r["precision@0.6"] == pytest.approx(2 / 4)


def test_lpips_unavailable_is_reported_not_faked():
    try:
        net = metrics.load_lpips()
    except metrics.LpipsUnavailable as exc:
        assert str(exc).startswith("LPIPS omitted")
    else:  # package and weights present: identical images have distance 0
        img = torch.rand(32, 32, 3)
        assert metrics.lpips_metric(net, img, img) == pytest.approx(0.0, abs=1e-4)
