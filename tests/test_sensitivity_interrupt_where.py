"""A Ctrl-C during a sensitivity analysis says where it stopped: measuring the dense model, or which probe
(layer, value, count), so the user knows what ``--resume`` will redo."""

from __future__ import annotations

import pytest
import torch

from examples.models import mlp
from sparsekit.cli import _interrupt_message
from sparsekit.errors import first_interruption
from sparsekit.recipe import validate_recipe
from sparsekit.sensitivity import analyze

RECIPE = validate_recipe({"pruning": [{"method": "magnitude", "sparsity": 0.5, "schedule": "oneshot"}]})


class StopAt:
    """Batches of a fixed digits-shaped set; the ``stop``-th pass over them raises KeyboardInterrupt (a Ctrl-C)."""

    def __init__(self, stop: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.data = [(torch.randn(8, 64, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(2)]
        self.passes, self.stop = 0, stop

    def __iter__(self):
        self.passes += 1
        if self.passes == self.stop:
            raise KeyboardInterrupt
        return iter(self.data)


def _every_interruption() -> list[str]:
    """What a Ctrl-C says at each pass over the data, from the first until the analysis ends without one."""
    said = []
    for stop in range(1, 20):
        torch.manual_seed(0)
        first_interruption(reset=True)
        try:
            analyze(
                mlp(in_features=64, hidden=[16]),
                RECIPE,
                StopAt(stop),
                input_shape=[1, 64],
                grid={"unstructured": [0.3, 0.6]},
            )
        except KeyboardInterrupt as err:
            where = err.args[0] if err.args else ""  # (reading the data's size: said nothing, before)
            assert (first_interruption(reset=True) or "") == where
            said.append(where)
        else:
            return said
    raise AssertionError(said)


@pytest.fixture(scope="module")
def said() -> list[str]:
    return _every_interruption()


def test_a_ctrl_c_while_the_dense_model_is_measured_says_so(said):
    assert "while measuring the dense model" in said, said


def test_a_ctrl_c_during_a_probe_names_the_layer_value_and_count(said):
    probes = [s for s in said if s.startswith("while probing")]
    # two layers x two values = four probes, each named once, in order
    assert probes == [
        "while probing fc1 at 0.3 (probe 1 of 4)",
        "while probing fc1 at 0.6 (probe 2 of 4)",
        "while probing fc2 at 0.3 (probe 3 of 4)",
        "while probing fc2 at 0.6 (probe 4 of 4)",
    ], said
    line = _interrupt_message("sensitivity", False, probes[2], None)
    assert line.startswith("Interrupted: while probing fc2 at 0.3 (probe 3 of 4). ")
    assert "--resume` continues the analysis from the last finished probe" in line
