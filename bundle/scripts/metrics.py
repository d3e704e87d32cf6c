"""Image-quality metrics on [0, 1] images with data range 1: PSNR (dB), SSIM and MSE.

One place for every score MedDenoise reports: validation handlers, evaluation and the benchmark all use MONAI's
``PSNRMetric``, ``SSIMMetric`` (Gaussian window 11, sigma 1.5) and ``MSEMetric`` through this module.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import MSEMetric, PSNRMetric, SSIMMetric

_WINDOW = 11


def ssim_metric(height: int = _WINDOW, width: int = _WINDOW) -> SSIMMetric:
    """MONAI's 2D SSIM with data range 1; the window shrinks (odd, >= 3) for images smaller than 11 pixels."""
    window = max(3, min(_WINDOW, height, width))
    window -= 1 - window % 2
    return SSIMMetric(spatial_dims=2, data_range=1.0, win_size=window)


def _as_batch(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(H, W), (C, H, W) or (B, C, H, W) -> float32 (B, C, H, W) tensor."""
    tensor = torch.as_tensor(np.asarray(image, dtype=np.float32) if not isinstance(image, torch.Tensor) else image)
    tensor = tensor.float()
    while tensor.ndim < 4:
        tensor = tensor[None]
    return tensor


def image_metrics(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> dict[str, float]:
    """``{"psnr", "ssim", "mse"}`` of one denoised image against its clean target (2D, both in [0, 1])."""
    pred_batch, target_batch = _as_batch(pred), _as_batch(target)
    if pred_batch.shape != target_batch.shape:
        raise ValueError(f"prediction {tuple(pred_batch.shape)} and target {tuple(target_batch.shape)} differ in shape")
    height, width = target_batch.shape[-2:]
    mse = float(MSEMetric()(pred_batch, target_batch).mean())
    # PSNR of identical images is infinite; report it as such rather than dividing by zero.
    psnr = float("inf") if mse == 0 else float(PSNRMetric(max_val=1.0)(pred_batch, target_batch).mean())
    ssim = float(ssim_metric(height, width)(pred_batch, target_batch).mean())
    return {"psnr": psnr, "ssim": ssim, "mse": mse}


def psnr_from_mse(mse: float, data_range: float = 1.0) -> float:
    """PSNR in dB for a given MSE: ``10 log10(range^2 / mse)``."""
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range**2 / mse))
