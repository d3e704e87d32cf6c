"""The denoising autoencoder: Gondara's design by default, any slice size in and out, configurable variants; the
network with an architectural blind spot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scripts.data import center_crop, load_slices
from scripts.networks import DenoisingAutoencoder
from scripts.noise import parse_noise
from scripts.noise_level import LatticeScore, SliceNoiseSigma, slice_noise_sigma


def test_default_is_gondaras_design():
    network = DenoisingAutoencoder()
    convs = [m for m in network.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 64, (3, 3)),
        (64, 64, (3, 3)),
        (64, 64, (3, 3)),
        (64, 64, (3, 3)),
        (64, 1, (3, 3)),
    ]
    assert sum(p.numel() for p in network.parameters()) == 112_001  # ~112k, as in the paper
    out = network(torch.rand(2, 1, 64, 64))
    assert out.shape == (2, 1, 64, 64) and out.min() >= 0 and out.max() <= 1, "sigmoid output"


@pytest.mark.parametrize("height, width", [(1, 1), (3, 5), (64, 64), (181, 217), (127, 33)])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"features": (16, 32, 64), "skip_connections": True, "residual": True, "final_activation": None},
        {"features": (8, 16), "skip_connections": True, "residual": True, "norm": "batch", "unshuffle": 2},
    ],
)
def test_any_slice_size_maps_to_itself(height, width, options):
    network = DenoisingAutoencoder(**options).eval()
    with torch.inference_mode():
        assert network(torch.rand(1, 1, height, width)).shape == (1, 1, height, width)


def test_padding_does_not_leak_into_the_result():
    torch.manual_seed(0)
    network = DenoisingAutoencoder(features=(8, 8)).eval()
    image = torch.rand(1, 1, 70, 70)
    with torch.inference_mode():
        whole = network(image)  # padded to 72
        unpadded = network(image[..., :64, :64])  # a multiple of 4: no padding
    # Away from the padded border (beyond the receptive field), the result does not depend on the padding.
    # (atol 1e-5: oneDNN may pick a different convolution algorithm per input size.)
    assert torch.allclose(whole[..., :32, :32], unpadded[..., :32, :32], atol=1e-5)


def test_residual_predicts_the_noise():
    network = DenoisingAutoencoder(features=(8,), residual=True, final_activation=None)
    torch.nn.init.zeros_(network.head.conv.weight)
    torch.nn.init.zeros_(network.head.conv.bias)
    image = torch.rand(1, 1, 16, 16)
    assert torch.equal(network(image), image), "a zero noise estimate returns the input"


def test_two_and_a_half_d_input_denoises_the_centre_slice():
    network = DenoisingAutoencoder(in_channels=3, features=(8, 8), residual=True, final_activation=None)
    torch.nn.init.zeros_(network.head.conv.weight)
    torch.nn.init.zeros_(network.head.conv.bias)
    stack = torch.rand(2, 3, 20, 24)
    assert torch.equal(network(stack), stack[:, 1:2])


def test_skip_connections_and_norm_build():
    network = DenoisingAutoencoder(features=(16, 32), convs_per_level=2, skip_connections=True, norm="batch")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules())
    assert network(torch.rand(2, 1, 40, 40)).shape == (2, 1, 40, 40)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="features"):
        DenoisingAutoencoder(features=())
    with pytest.raises(ValueError, match="final_activation"):
        DenoisingAutoencoder(final_activation="tanh")
    with pytest.raises(ValueError, match="refine_blocks"):
        DenoisingAutoencoder(refine_blocks=-1)
    with pytest.raises(ValueError, match="fine_blocks"):
        DenoisingAutoencoder(fine_blocks=-1)


class _FixedScore(torch.nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_full((x.shape[0],), self.value)


def test_lattice_input_needs_the_noise_level_input_and_reaches_every_pixel():
    with pytest.raises(ValueError, match="noise_level_input"):
        DenoisingAutoencoder(lattice_input=True)
    torch.manual_seed(0)
    network = DenoisingAutoencoder(features=(8, 16), residual=True, noise_level_input=True, lattice_input=True).eval()
    assert isinstance(network.lattice_score, LatticeScore)
    for film in [*network.encoder_films, *network.decoder_films]:
        torch.nn.init.normal_(film.project.weight, std=0.1)
    image = torch.rand(1, 1, 64, 64) * 0.5 + 0.25
    with torch.inference_mode():
        out = network(image)
        assert torch.allclose(torch.jit.script(network)(image), out), "exportable as models/model.ts"
        # The same image, the score alone changed: every pixel's answer moves, far from the image's edges too.
        answers = []
        for value in (0.0, 1.0):
            network.lattice_score = _FixedScore(value)
            answers.append(network(image))
    assert not torch.allclose(answers[0][..., 24:40, 24:40], answers[1][..., 24:40, 24:40])


def test_unshuffle_stem_works_at_lower_resolution_and_clamp_bounds_the_output():
    network = DenoisingAutoencoder(features=(8,), unshuffle=2, final_activation="clamp").eval()
    assert network.multiple == 4
    first_conv = next(m for m in network.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == 4, "a 2x space-to-depth stem turns 1 channel into 4 at half resolution"
    with torch.inference_mode():
        out = network(torch.rand(1, 1, 30, 42) * 3 - 1)
    assert out.shape == (1, 1, 30, 42) and out.min() >= 0 and out.max() <= 1


def test_global_context_starts_as_the_identity_and_then_sees_the_whole_image():
    torch.manual_seed(0)
    options = {"features": (8, 8), "skip_connections": True, "residual": True, "final_activation": None}
    plain = DenoisingAutoencoder(**options).eval()
    with_context = DenoisingAutoencoder(**options, global_context=True).eval()
    missing = with_context.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["context.mix.bias", "context.mix.weight"], "a network without the block loads"
    image = torch.rand(1, 1, 64, 64)
    far_changed = image.clone()
    far_changed[..., 48:, 48:] = 1.0  # a corner far outside the receptive field of pixel (0, 0)
    with torch.inference_mode():
        assert torch.equal(with_context(image), plain(image)), "zero-initialised: the identity"
        assert torch.equal(with_context(image)[..., 0, 0], with_context(far_changed)[..., 0, 0]), "local so far"
        torch.nn.init.normal_(with_context.context.mix.weight)
        assert not torch.equal(with_context(image)[..., 0, 0], with_context(far_changed)[..., 0, 0]), (
            "a trained block carries image-wide statistics to every pixel"
        )
    torch.jit.script(with_context)  # exportable as models/model.ts


@pytest.mark.parametrize("norm", ["batch", None])
@pytest.mark.parametrize("where", ["refine_blocks", "fine_blocks"])
def test_refine_blocks_start_as_the_identity_then_learn(norm, where):
    torch.manual_seed(0)
    options = {"features": (8, 16), "skip_connections": True, "residual": True, "final_activation": None, "norm": norm}
    plain = DenoisingAutoencoder(**options).eval()
    deeper = DenoisingAutoencoder(**options, **{where: 2}).eval()
    missing = deeper.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(".body." in key for key in missing), "a network without the blocks loads"
    assert sum(p.numel() for p in deeper.parameters()) > sum(p.numel() for p in plain.parameters())
    image = torch.rand(2, 1, 32, 32)
    with torch.inference_mode():
        assert torch.equal(deeper(image), plain(image)), "zero-initialised: the identity"
    deeper.train()
    torch.nn.functional.mse_loss(deeper(image), torch.zeros_like(image)).backward()
    last = (deeper.decoder if where == "refine_blocks" else deeper.encoder)[0][-1].body[1]
    grad = last.adn.N.weight.grad if norm else last.conv.weight.grad
    assert grad is not None and grad.abs().sum() > 0, "the zero-initialised layer receives a gradient"
    torch.jit.script(deeper)  # exportable as models/model.ts


@pytest.mark.parametrize(
    "spec", ["gaussian:factor=0.02", "gaussian:factor=0.1", "gaussian:factor=0.5", "rician:std=0.05"]
)
def test_the_networks_noise_estimate_is_the_readout_on_real_images(embedded, spec):
    """The network's in-graph estimator (float32, a batch at once) and the readout (:func:`slice_noise_sigma`: float64,
    one image at a time) are one implementation: equal to float precision on the real CT, MR and X-ray test images,
    from light to mostly clipped noise."""
    images = [center_crop(item["label"][0], 256) for item in load_slices(embedded["test"], 1, progress=False)]
    noisy = np.stack([parse_noise(spec).set_random_state(seed=0)(image[None]) for image in images])
    network = DenoisingAutoencoder(noise_level_input=True)
    estimated = network.noise_sigma(torch.from_numpy(noisy).float()).numpy()
    reference = np.array([slice_noise_sigma(image[0]) for image in noisy])
    np.testing.assert_allclose(estimated, reference, rtol=1e-4)
    assert isinstance(network.noise_sigma, SliceNoiseSigma)


def test_noise_level_input_starts_as_the_identity_then_tells_light_noise_from_heavy():
    torch.manual_seed(0)
    options = {
        "features": (8, 16),
        "skip_connections": True,
        "residual": True,
        "final_activation": None,
        "norm": "batch",
    }
    plain = DenoisingAutoencoder(**options).eval()
    conditioned = DenoisingAutoencoder(**options, noise_level_input=True).eval()
    missing = conditioned.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(key.startswith(("noise_embedding.", "encoder_films.", "decoder_films.")) for key in missing)
    light, heavy = (torch.rand(1, 1, 64, 64) * 0.5 + 0.25 + sigma * torch.randn(1, 1, 64, 64) for sigma in (0.02, 0.2))
    with torch.inference_mode():
        assert torch.equal(conditioned(light), plain(light)), "zero-initialised: the identity"
        for film in [*conditioned.encoder_films, *conditioned.decoder_films]:
            torch.nn.init.normal_(film.project.weight, std=0.1)
        # The same content gives another answer once the measured level differs: the second half of the image is
        # swapped for a heavily noised one, and the output changes in the first half, out of the convolutions' reach.
        mixed = torch.cat([light[..., :32], heavy[..., 32:]], dim=-1)
        pair = torch.cat([light, mixed])
        out, local = conditioned(pair), plain(pair)
        assert torch.equal(local[0, ..., :8], local[1, ..., :8]), "beyond the receptive field of the unconditioned"
        assert not torch.allclose(out[0, ..., :8], out[1, ..., :8]), "the level reaches every pixel"
    scripted = torch.jit.script(conditioned)  # exportable as models/model.ts
    assert torch.allclose(scripted(pair), out)
