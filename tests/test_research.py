"""The research objectives that lost (``research/``): Recorrupted-to-Recorrupted pairs, the SURE target, the censored
and normalized blind-spot losses, the architectural blind-spot network and the checkpoint surgery between one- and two-output heads. Their configs run against the bundle in
``test_selfsupervised.py::test_selfsupervised_config_never_reads_a_clean_image``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from research.blind_spot_losses import CensoredBlindSpotLoss, NormalizedBlindSpotLoss
from research.blind_spot_network import BlindSpotNetwork
from research.checkpoints import mean_channel_only, with_prior_channel
from research.recorrupted import Recorruptd
from research.sure import NoiseSigmaTargetd, sigma_targets
from scripts.data import center_crop
from scripts.networks import DenoisingAutoencoder
from scripts.noise import parse_noise
from scripts.selfsupervised import BlindSpotLoss


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


def test_censored_loss_learns_black_as_black_where_plain_squared_error_learns_grey():
    """Clean black (0) under Gaussian noise of sigma 0.1 clipped to [0, 1]: half of the noisy values sit at 0 and the
    rest average 0.08. Over constant predictions, the squared error is smallest near 0.04; the censored loss near 0."""
    sigma = 0.1
    noisy = parse_noise(f"gaussian:factor={sigma}").set_random_state(seed=0)(np.zeros((1, 1, 64, 64), np.float32))
    target = torch.cat([torch.from_numpy(noisy), torch.ones(1, 1, 64, 64), torch.full((1, 1, 64, 64), sigma)], dim=1)
    levels = np.linspace(-0.1, 0.1, 201)

    def best(loss: torch.nn.Module) -> float:
        return levels[np.argmin([loss(torch.full((1, 1, 64, 64), level), target).item() for level in levels])]

    assert abs(best(CensoredBlindSpotLoss())) < 0.01
    assert best(BlindSpotLoss()) == pytest.approx(sigma / np.sqrt(2 * np.pi), abs=0.01)
    with pytest.raises(ValueError, match="sigma"):
        CensoredBlindSpotLoss()(torch.zeros(1, 1, 4, 4), target[:, :2, :4, :4])


def test_normalized_loss_divides_each_sample_by_its_own_noise_variance():
    """Two samples with the same relative error (error = sigma/2) count the same once normalized; plain squared errors
    let the heavily noised one (sigma 0.2) outweigh the light one (sigma 0.02) 100 to 1."""
    sigmas = torch.tensor([0.02, 0.2]).view(2, 1, 1, 1)
    noisy = torch.full((2, 1, 8, 8), 0.5)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, ::2, ::2] = 1
    target = torch.cat([noisy, mask, sigmas.expand(2, 1, 8, 8)], dim=1)
    pred = noisy + sigmas / 2
    assert NormalizedBlindSpotLoss()(pred, target) == pytest.approx(0.25, rel=1e-5)
    per_sample = [float(NormalizedBlindSpotLoss()(pred[i : i + 1], target[i : i + 1])) for i in range(2)]
    assert per_sample[0] == pytest.approx(per_sample[1], rel=1e-5)
    assert BlindSpotLoss()(pred, target) == pytest.approx((0.01**2 + 0.1**2) / 2, rel=1e-5)
    flat = target.clone()
    flat[:, 2] = 0.0  # a flat slice measures no noise: the floor keeps its weight bounded
    assert NormalizedBlindSpotLoss()(pred, flat) == pytest.approx(float(((sigmas / 2) ** 2).mean() / 0.01**2), rel=1e-5)
    with pytest.raises(ValueError, match="sigma"):
        NormalizedBlindSpotLoss()(pred, target[:, :2])


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_blind_spot_network_never_sees_the_pixel_it_predicts(ct_slice, training):
    """d output(p) / d input(p) is exactly zero at every pixel tried, on a real CT crop whose size is no multiple of
    the pooling factor (zero padding, four turns), while each of its eight neighbours reaches it."""
    torch.manual_seed(0)
    network = BlindSpotNetwork(features=(8, 8, 8)).train(training)
    image = torch.tensor(center_crop(ct_slice, 64)[:61, :45][None, None], requires_grad=True)
    out = network(image)
    assert out.shape == (1, 2, 61, 45)
    for row, col in [(0, 0), (30, 22), (60, 44), (17, 40), (1, 1)]:
        (grad,) = torch.autograd.grad(out[0, 0, row, col], image, retain_graph=True)
        assert grad[0, 0, row, col] == 0
        window = grad[0, 0, max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2]
        assert (window != 0).sum() == window.numel() - 1, "every neighbour but the pixel itself is seen"


@pytest.mark.parametrize("height, width", [(1, 1), (3, 5), (64, 64), (127, 33)])
def test_blind_spot_network_maps_any_slice_size_to_itself(height, width):
    with torch.inference_mode():
        assert BlindSpotNetwork(features=(8, 8)).eval()(torch.rand(1, 1, height, width)).shape == (1, 2, height, width)
    with pytest.raises(ValueError, match="features"):
        BlindSpotNetwork(features=())
