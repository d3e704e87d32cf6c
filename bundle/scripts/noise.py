"""Noise models: seedable, MONAI-style randomizable transforms with one-line spec strings.

Every model works on images scaled to [0, 1] (any shape, NumPy array or torch tensor; the output has the input's type
and float32 values) and clips its output to [0, 1] unless built with ``clip=False``.

Spec strings name a model and its parameters, e.g. ``gaussian:factor=0.1,mean=0,std=1``. A parameter written as a range
``LOW..HIGH`` is drawn uniformly per sample, which is how one blind model is trained across noise levels. A mixture of
models is written ``mix:SPEC|SPEC|...`` and draws one member per sample, each with probability proportional to its
``weight=W`` parameter (default 1).

    >>> noise = parse_noise("gaussian:factor=0.07,mean=0,std=1")
    >>> noise.set_random_state(seed=0)
    >>> noisy = noise(clean)
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, RandRicianNoise
from scipy import ndimage

from .errors import NoiseSpecError

Level = float | tuple[float, float]


def _format_level(value: Level) -> str:
    if isinstance(value, tuple):
        return f"{value[0]:g}..{value[1]:g}"
    return f"{value:g}"


def _parse_level(name: str, text: str) -> Level:
    try:
        values = tuple(float(part) for part in text.split("..", 1))
    except ValueError:
        raise NoiseSpecError(f"noise parameter {name}={text!r} is not a number or a LOW..HIGH range") from None
    if len(values) == 1:
        return values[0]
    if not values[0] <= values[1]:
        raise NoiseSpecError(f"noise parameter {name}={text}: the range must be LOW..HIGH with LOW <= HIGH")
    return values


class NoiseModel(RandomizableTransform):
    """Base class: a named noise model whose float parameters (``LEVELS``) may be fixed values or ranges.

    Subclasses set ``NAME``, ``LEVELS`` (parameter names with defaults) and ``NON_NEGATIVE`` (the levels that must be
    >= 0) and implement :meth:`corrupt`, which adds noise to a float64 NumPy array using ``self.R`` and the levels
    drawn for this sample.
    """

    NAME: ClassVar[str]
    LEVELS: ClassVar[dict[str, float]]
    NON_NEGATIVE: ClassVar[tuple[str, ...]] = ()
    REGISTRY: ClassVar[dict[str, type[NoiseModel]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "NAME" in cls.__dict__:
            NoiseModel.REGISTRY[cls.NAME] = cls

    def __init__(self, clip: bool = True, **levels: Level) -> None:
        RandomizableTransform.__init__(self, prob=1.0)
        unknown = set(levels) - set(self.LEVELS)
        if unknown:
            raise NoiseSpecError(
                f"noise '{self.NAME}' has no parameter {', '.join(sorted(unknown))}; "
                f"it takes {', '.join(self.LEVELS)} and clip"
            )
        self.levels: dict[str, Level] = {name: levels.get(name, default) for name, default in self.LEVELS.items()}
        for name, value in self.levels.items():
            self._check_level(name, value[0] if isinstance(value, tuple) else value)
            if isinstance(value, tuple):
                self._check_level(name, value[1])
        self.clip = clip
        self.drawn: dict[str, float] = {}

    def _check_level(self, name: str, value: float) -> None:
        """Rejects values that have no meaning; subclasses with other rules than ``NON_NEGATIVE`` extend it."""
        if not np.isfinite(value):
            raise NoiseSpecError(f"noise '{self.NAME}': {name}={value} must be a finite number")
        if name in self.NON_NEGATIVE and value < 0:
            raise NoiseSpecError(f"noise '{self.NAME}': {name}={value} must be >= 0")

    @property
    def spec(self) -> str:
        """The canonical spec string; ``parse_noise(model.spec)`` rebuilds an equal model."""
        params = [f"{name}={_format_level(value)}" for name, value in self.levels.items()]
        if not self.clip:
            params.append("clip=0")
        return f"{self.NAME}:{','.join(params)}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    def randomize(self, data: Any = None) -> None:
        self.drawn = {
            name: float(self.R.uniform(*value)) if isinstance(value, tuple) else value
            for name, value in self.levels.items()
        }

    def corrupt(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, img: np.ndarray | torch.Tensor, randomize: bool = True) -> np.ndarray | torch.Tensor:
        if randomize:
            self.randomize()
        values = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        noisy = self.corrupt(values.astype(np.float64))
        if self.clip:
            noisy = np.clip(noisy, 0.0, 1.0)
        noisy = noisy.astype(np.float32)
        if isinstance(img, torch.Tensor):
            return torch.as_tensor(noisy, device=img.device)
        return noisy


class GaussianNoise(NoiseModel):
    """``clip(x + factor * N(mean, std), 0, 1)`` — the seeds' additive Gaussian noise, exactly."""

    NAME = "gaussian"
    LEVELS = {"factor": 0.1, "mean": 0.0, "std": 1.0}
    NON_NEGATIVE = ("factor", "std")

    def corrupt(self, image: np.ndarray) -> np.ndarray:
        d = self.drawn
        return image + d["factor"] * self.R.normal(d["mean"], d["std"], size=image.shape)


class PoissonNoise(NoiseModel):
    """``clip(x + factor * Poisson(lam), 0, 1)`` — the dental X-ray seed's additive Poisson noise, exactly."""

    NAME = "poisson"
    LEVELS = {"factor": 0.2, "lam": 1.0}
    NON_NEGATIVE = ("factor", "lam")

    def corrupt(self, image: np.ndarray) -> np.ndarray:
        d = self.drawn
        return image + d["factor"] * self.R.poisson(d["lam"], size=image.shape)


class RicianNoise(NoiseModel):
    """MRI magnitude noise ``sqrt((x + N(0, std))**2 + N(0, std)**2)``, computed by MONAI's ``RandRicianNoise``."""

    NAME = "rician"
    LEVELS = {"std": 0.05}
    NON_NEGATIVE = ("std",)

    def __init__(self, clip: bool = True, **levels: Level) -> None:
        super().__init__(clip=clip, **levels)
        self._rician = RandRicianNoise(prob=1.0, mean=0.0, std=1.0, relative=False, sample_std=False)

    def corrupt(self, image: np.ndarray) -> np.ndarray:
        self._rician.std = self.drawn["std"]
        self._rician.R = self.R  # one random stream: the spec's seed fixes MONAI's draws too
        return np.asarray(self._rician(image, randomize=True), dtype=np.float64)


class PhotonNoise(NoiseModel):
    """Signal-dependent photon counting ``Poisson(x * peak) / peak`` (low-dose X-ray and CT); lower peak = noisier."""

    NAME = "photon"
    LEVELS = {"peak": 200.0}

    def _check_level(self, name: str, value: float) -> None:
        super()._check_level(name, value)
        if value <= 0:
            raise NoiseSpecError(f"noise 'photon': peak={value} must be > 0 (photons at full intensity)")

    def corrupt(self, image: np.ndarray) -> np.ndarray:
        peak = self.drawn["peak"]
        return self.R.poisson(np.clip(image, 0.0, None) * peak) / peak


class SpeckleNoise(NoiseModel):
    """Multiplicative ultrasound-like speckle ``x * (1 + N(0, std))``."""

    NAME = "speckle"
    LEVELS = {"std": 0.1}
    NON_NEGATIVE = ("std",)

    def corrupt(self, image: np.ndarray) -> np.ndarray:
        return image * (1.0 + self.R.normal(0.0, self.drawn["std"], size=image.shape))


class CorrelatedNoise(NoiseModel):
    """Spatially correlated Gaussian noise ``x + std * (G_width * N(0, 1)) / ||G_width||``, as a CT reconstruction
    kernel or MR k-space filtering leaves it: white noise blurred in-plane (the last two axes) by a Gaussian of
    ``width`` pixels, rescaled so each pixel's standard deviation is still ``std``. ``width=0`` is white noise."""

    NAME = "correlated"
    LEVELS = {"std": 0.1, "width": 1.0}
    NON_NEGATIVE = ("std", "width")

    def corrupt(self, image: np.ndarray) -> np.ndarray:
        std, width = self.drawn["std"], self.drawn["width"]
        white = self.R.normal(0.0, 1.0, size=image.shape)
        if width == 0:
            return image + std * white
        axes = tuple(range(image.ndim))[-2:]
        blurred = ndimage.gaussian_filter(white, sigma=width, axes=axes, mode="wrap")
        # Blurring unit white noise leaves a standard deviation of sum(k^2) for a separable 2D kernel k (x) k.
        impulse = np.zeros(2 * int(np.ceil(4 * width)) + 1)
        impulse[len(impulse) // 2] = 1.0
        kernel = ndimage.gaussian_filter1d(impulse, width, mode="constant")
        return image + std * blurred / np.sum(kernel**2)


class MaskNoise(NoiseModel):
    """Masking corruption of the classic DAE: each pixel is set to 0 with probability ``p``."""

    NAME = "mask"
    LEVELS = {"p": 0.1}

    def _check_level(self, name: str, value: float) -> None:
        super()._check_level(name, value)
        if not 0 <= value <= 1:
            raise NoiseSpecError(f"noise 'mask': p={value} must be in [0, 1]")

    def corrupt(self, image: np.ndarray) -> np.ndarray:
        return image * (self.R.uniform(size=image.shape) >= self.drawn["p"])


class NoiseMixture(RandomizableTransform):
    """Draws one member model per sample (with ``weights``), then that member draws its own levels.

    Train one blind model for all noise settings with a mixture of ranged members, e.g.
    ``mix:gaussian:factor=0..0.5,mean=0,std=1|photon:peak=50..1000``.
    """

    NAME = "mix"

    def __init__(self, members: Sequence[NoiseModel], weights: Sequence[float] | None = None) -> None:
        RandomizableTransform.__init__(self, prob=1.0)
        if not members:
            raise NoiseSpecError(
                "a noise mixture needs at least one member, e.g. mix:gaussian:factor=0.1|photon:peak=200"
            )
        self.members = list(members)
        weights = np.ones(len(members)) if weights is None else np.asarray(weights, dtype=float)
        if len(weights) != len(members) or (weights < 0).any() or weights.sum() <= 0:
            raise NoiseSpecError("mixture weights must be one non-negative number per member, not all zero")
        self.weights = weights / weights.sum()
        self.chosen: NoiseModel = self.members[0]

    @property
    def spec(self) -> str:
        uniform = np.allclose(self.weights, self.weights[0])
        return "mix:" + "|".join(
            member.spec if uniform else f"{member.spec},weight={weight * len(self.weights):g}"
            for member, weight in zip(self.members, self.weights, strict=True)
        )

    def __repr__(self) -> str:
        return f"NoiseMixture({self.spec!r})"

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> NoiseMixture:
        super().set_random_state(seed, state)
        for member in self.members:
            member.set_random_state(state=self.R)  # one shared stream keeps a seeded mixture reproducible
        return self

    def randomize(self, data: Any = None) -> None:
        self.chosen = self.members[self.R.choice(len(self.members), p=self.weights)]

    def __call__(self, img: np.ndarray | torch.Tensor, randomize: bool = True) -> np.ndarray | torch.Tensor:
        if randomize:
            self.randomize()
        return self.chosen(img, randomize=randomize)


Noise = NoiseModel | NoiseMixture


def parse_noise(spec: str | Noise) -> Noise:
    """Build a noise model from its spec string (a model passes through unchanged).

    ``gaussian:factor=0.1,mean=0,std=1``, ``poisson:factor=0.2,lam=5``, ``rician:std=0.05``, ``photon:peak=200``,
    ``speckle:std=0.2``, ``correlated:std=0.1,width=1``, ``mask:p=0.3``; ``clip=0`` turns clipping off; ``mix:SPEC|SPEC`` mixes.
    """
    if isinstance(spec, NoiseModel | NoiseMixture):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise NoiseSpecError(f"a noise spec must be a non-empty string such as 'gaussian:factor=0.1', not {spec!r}")
    spec = spec.strip()
    if spec.startswith("mix:"):
        weighted = [_split_weight(part) for part in spec[4:].split("|")]
        members = [parse_noise(part) for part, _ in weighted]
        if any(isinstance(member, NoiseMixture) for member in members):
            raise NoiseSpecError(f"a mixture cannot contain another mixture: {spec!r}")
        return NoiseMixture(members, weights=[weight for _, weight in weighted])
    name, _, params = spec.partition(":")
    cls = NoiseModel.REGISTRY.get(name.strip().lower())
    if cls is None:
        raise NoiseSpecError(f"unknown noise model {name!r} in {spec!r}; known: {', '.join(NoiseModel.REGISTRY)}, mix")
    levels: dict[str, Level] = {}
    clip = True
    for item in filter(None, (part.strip() for part in params.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise NoiseSpecError(f"noise parameter {item!r} in {spec!r} must be written NAME=VALUE")
        key = key.strip()
        if key == "clip":
            if value.strip() not in ("0", "1"):
                raise NoiseSpecError(f"clip={value} in {spec!r} must be 0 or 1")
            clip = value.strip() == "1"
        else:
            levels[key] = _parse_level(key, value.strip())
    return cls(clip=clip, **levels)


def _split_weight(member_spec: str) -> tuple[str, float]:
    """``"gaussian:factor=0.1,weight=2"`` -> ``("gaussian:factor=0.1", 2.0)``: a mixture member's draw weight."""
    name, _, params = member_spec.partition(":")
    kept, weight = [], 1.0
    for item in params.split(","):
        key, _, value = item.partition("=")
        if key.strip() != "weight":
            kept.append(item)
            continue
        try:
            weight = float(value)
        except ValueError:
            raise NoiseSpecError(f"mixture weight in {member_spec!r} must be a number, e.g. weight=2") from None
    return f"{name}:{','.join(kept)}" if kept else name, weight


def noise_sigma(spec: str | Noise) -> float | None:
    """Standard deviation (on the [0, 1] scale) of a fixed additive noise, as a baseline told the true level needs.

    Signal-dependent models use the level at mid-grey (x = 0.5). Returns ``None`` for ranged models and mixtures.
    """
    model = parse_noise(spec)
    if isinstance(model, NoiseMixture) or any(isinstance(v, tuple) for v in model.levels.values()):
        return None
    levels = model.levels
    sigmas = {
        "gaussian": lambda: levels["factor"] * levels["std"],
        "poisson": lambda: levels["factor"] * np.sqrt(levels["lam"]),
        "rician": lambda: levels["std"],
        "photon": lambda: np.sqrt(0.5 / levels["peak"]),
        "speckle": lambda: 0.5 * levels["std"],
        "correlated": lambda: levels["std"],
        "mask": lambda: 0.5 * np.sqrt(levels["p"] * (1 - levels["p"])),
    }
    return float(sigmas[model.NAME]())


#: The benchmark's default settings: the CT seed, the dental X-ray seed's seven, and two physical models.
DEFAULT_SETTINGS: tuple[str, ...] = (
    "gaussian:factor=0.07,mean=0,std=1",
    "gaussian:factor=0.1,mean=0,std=1",
    "gaussian:factor=0.1,mean=1,std=2",
    "gaussian:factor=0.2,mean=0,std=1",
    "gaussian:factor=0.2,mean=1,std=2",
    "gaussian:factor=0.5,mean=0,std=1",
    "poisson:factor=0.2,lam=1",
    "poisson:factor=0.2,lam=5",
    "rician:std=0.05",
    "photon:peak=200",
)


class RandNoised(RandomizableTransform, MapTransform):
    """Dictionary version: applies one noise model (or spec) to ``keys``; pair it with ``CopyItemsd`` to keep the clean
    image, e.g. ``CopyItemsd(keys="label", names="image")`` then ``RandNoised(keys="image", noise=...)``."""

    def __init__(self, keys: KeysCollection, noise: str | Noise, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.noise = parse_noise(noise)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandNoised:
        super().set_random_state(seed, state)
        self.noise.set_random_state(state=self.R)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.noise(d[key])
        return d
