"""Slice views and samples (``scripts.slices``): the one place the product turns a volume into slices."""

import re

import numpy as np
import pytest
from product_grep import product_lines

from scripts.slices import evenly_spaced, slice_stack, unstack


@pytest.mark.parametrize(
    ("count", "at_most", "expected"),
    [(10, 4, [0, 3, 6, 9]), (3, 16, [0, 1, 2]), (5, None, [0, 1, 2, 3, 4]), (300, 2, [0, 299]), (1, 16, [0])],
)
def test_evenly_spaced_takes_the_first_and_last_and_never_more_than_asked(count, at_most, expected):
    assert evenly_spaced(count, at_most).tolist() == expected


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_stack_is_a_view_and_unstack_its_inverse(axis):
    volume = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    stack = slice_stack(volume, axis)
    assert np.shares_memory(stack, volume) and stack.shape[0] == volume.shape[axis]
    np.testing.assert_array_equal(unstack(stack, volume, axis), volume)
    assert slice_stack(volume[0]).shape == (1, 3, 4) and unstack(slice_stack(volume[0]), volume[0]).shape == (3, 4)


#: What walking a volume's slices by hand looks like: moving the slicing axis, or spacing indices over the slices.
_SLICE_WALK = re.compile(r"\bnp\.(moveaxis|swapaxes|rollaxis|linspace)\(|ndim == 3 else [\w.]+\[None\]")


def test_no_other_slice_walk_in_the_product():
    """``grep -rnE 'np\\.(moveaxis|swapaxes|linspace)\\(|ndim == 3 else .*\\[None\\]'`` over the product finds only
    ``scripts/slices.py``: the engine, the noise readout, adaptation, training data and benchmarks take their slices
    and samples there."""
    found = product_lines(_SLICE_WALK, {"bundle/scripts/slices.py"})
    assert not found, "take slices through scripts.slices instead:\n" + "\n".join(found)
    assert _SLICE_WALK.search("x = np.moveaxis(v, 2, 0)") and _SLICE_WALK.search("a if a.ndim == 3 else a[None]")
