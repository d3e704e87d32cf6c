"""The research objectives that lost (``research/``): Recorrupted-to-Recorrupted pairs, the SURE target and the
checkpoint surgery between one- and two-output heads. Their configs run against the bundle in
``test_selfsupervised.py::test_selfsupervised_config_never_reads_a_clean_image``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from research.checkpoints import mean_channel_only, with_prior_channel
from research.recorrupted import Recorruptd
from research.sure import NoiseSigmaTargetd, sigma_targets
from scripts.data import center_crop
from scripts.networks import DenoisingAutoencoder
from scripts.noise import parse_noise


@pytest.fixture(scope="module")
def noisy_ct(ct_slice):
    """A 128x128 crop of a real CT slice with Gaussian noise of sigma 0.1, [0, 1] float32."""
    return parse_noise("gaussian:factor=0.1,mean=0,std=1").set_random_state(seed=0)(center_crop(ct_slice, 128))


def test_a_single_output_blind_spot_network_grows_a_prior_channel_without_changing_its_mean(noisy_ct):
    noisy = noisy_ct
    torch.manual_seed(0)
    single = DenoisingAutoencoder(features=(16, 32), skip_connections=True, unshuffle=2, final_activation=None).eval()
    posterior = DenoisingAutoencoder(
        features=(16, 32), skip_connections=True, unshuffle=2, final_activation=None, out_channels=2
    ).eval()
    posterior.load_state_dict(with_prior_channel(single.state_dict(), log_prior=-7.0))
    image = torch.as_tensor(noisy[None, None, :64, :64], dtype=torch.float32)
    with torch.inference_mode():
        mean, log_prior = posterior(image)[0]
        torch.testing.assert_close(mean, single(image)[0, 0])
    torch.testing.assert_close(log_prior, torch.full_like(log_prior, -7.0))


def test_mean_channel_only_undoes_growing_a_prior_channel():
    single = DenoisingAutoencoder(features=(16, 32), skip_connections=True, unshuffle=2, final_activation=None)
    state = single.state_dict()
    for name, tensor in mean_channel_only(with_prior_channel(state)).items():
        torch.testing.assert_close(tensor, state[name], msg=name)


def test_recorrupted_copies_have_independent_noise_around_the_clean_image():
    """The point of the objective: the input's and the target's noise are uncorrelated (hence independent for
    Gaussian noise), each with the variance the recorruption promises, so the target carries no trace of the input's
    noise and the best prediction of it is the clean image."""
    clean = np.full((1, 256, 256), 0.5, dtype=np.float32)  # mid-grey: the noise is not clipped anywhere
    noise = parse_noise("gaussian:factor=0.1,mean=0,std=1")
    noise.set_random_state(seed=1)
    noisy = noise(clean)
    original = noisy.copy()
    pair = Recorruptd("image", alpha=0.5, clip_input=False).set_random_state(seed=0)({"image": noisy, "sigma": 0.1})
    input_noise, target_noise = (pair[key][0] - clean[0] for key in ("image", "label"))
    assert input_noise.std() == pytest.approx(0.1 * np.sqrt(1 + 0.5**2), rel=0.02)
    assert target_noise.std() == pytest.approx(0.1 * np.sqrt(1 + 1 / 0.5**2), rel=0.02)
    assert abs(np.corrcoef(input_noise.ravel(), target_noise.ravel())[0, 1]) < 0.01
    assert np.corrcoef((noisy - clean).ravel(), input_noise.ravel())[0, 1] > 0.8  # the same scan, recorrupted
    np.testing.assert_array_equal(noisy, original)  # the item's noisy image is not modified in place


def test_recorruption_clips_the_input_only():
    """By default the input copy is clipped to [0, 1], as every image at inference is; the target keeps its unclipped
    noise (clipping it would bias the objective)."""
    clean = np.zeros((1, 64, 64), dtype=np.float32)
    clean[:, :, 32:] = 1.0  # black and white halves, where recorruption goes below 0 and above 1
    noise = parse_noise("gaussian:factor=0.1,mean=0,std=1")
    noise.set_random_state(seed=0)
    item = {"image": noise(clean), "sigma": 0.1}
    clipped = Recorruptd("image").set_random_state(seed=0)(item)
    unclipped = Recorruptd("image", clip_input=False).set_random_state(seed=0)(item)
    assert unclipped["image"].min() < 0.0 and clipped["image"].min() >= 0.0 and clipped["image"].max() <= 1.0
    np.testing.assert_array_equal(clipped["image"], unclipped["image"].clip(0.0, 1.0))
    np.testing.assert_array_equal(clipped["label"], unclipped["label"])
    assert clipped["label"].min() < 0.0


def test_sure_target_is_the_noisy_centre_channel_and_its_sigma(noisy_ct):
    """For a 2.5D input (three slices) the target is the centre slice, the one denoised, and a channel of its sigma;
    the input is not changed."""
    stack = np.stack([noisy_ct * 0.5, noisy_ct, noisy_ct * 0.25])
    [item] = sigma_targets([{"image": stack, "sigma": 0.1}])
    assert item["label"].shape == (2, 128, 128)
    np.testing.assert_array_equal(item["label"][0], noisy_ct)
    assert np.all(item["label"][1] == np.float32(0.1))
    np.testing.assert_array_equal(item["image"], stack)
    as_tensor = NoiseSigmaTargetd("image")({"image": torch.from_numpy(stack), "sigma": 0.1})["label"]
    torch.testing.assert_close(as_tensor, torch.from_numpy(item["label"]))
