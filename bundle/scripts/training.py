"""Training helpers used by the bundle's configs."""

from __future__ import annotations

import os

from ignite.engine import Engine, Events


class ValidationCurve:
    """Ignite handler for the validation evaluator: after each validation, plots every metric against the epoch
    and saves the figure as a PNG (``save_path``), so the curve is there to look at without TensorBoard."""

    def __init__(self, save_path: str) -> None:
        self.save_path = save_path
        self.history: dict[str, list[tuple[int, float]]] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epoch = engine.state.epoch if engine.state.epoch else len(next(iter(self.history.values()), [])) + 1
        for name, value in engine.state.metrics.items():
            self.history.setdefault(name, []).append((epoch, float(value)))
        figure, axes = plt.subplots(1, len(self.history), figsize=(4 * len(self.history), 3), squeeze=False)
        for axis, (name, points) in zip(axes[0], sorted(self.history.items()), strict=True):
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o")
            axis.set_xlabel("epoch")
            axis.set_title(name)
            axis.grid(alpha=0.3)
        figure.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(self.save_path)), exist_ok=True)
        figure.savefig(self.save_path, dpi=100)
        plt.close(figure)
