"""Review (trainers angle): a user's own training loop driving the Python API."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

import sparsekit


def _mlp(d: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, 4))


_RECIPE = {
    "version": 1,
    "finetune": {"epochs": 2},
    "pruning": [
        {
            "method": "magnitude",
            "sparsity": 0.5,
            "schedule": {"start_epoch": 0, "end_epoch": 1, "every": 0.5},
            "layers": {"exclude": ["2"], "types": ["Linear"]},
        }
    ],
}


def test_state_of_another_width_is_a_value_error_naming_the_layer_and_changes_nothing():
    saved = sparsekit.Pruner(_mlp(8), _RECIPE, steps_per_epoch=2)
    for _ in range(2):
        saved.step()
    state = saved.state_dict()
    model = _mlp(6)  # same layer names, another input width
    pruner = sparsekit.Pruner(model, _RECIPE, steps_per_epoch=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"'0'.*\[16, 8\].*\[16, 6\]"):
        pruner.load_state_dict(state)
    assert pruner.step_count == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(m.shape == (16, 6) for n, m in pruner.masks().items() if n == "0")


def _loop(model, pruner, steps, order="after", optimizer_model=None):
    torch.manual_seed(0)
    opt = torch.optim.SGD((optimizer_model or model).parameters(), lr=0.1, momentum=0.9)
    trained = optimizer_model or model
    for _ in range(steps):
        x, y = torch.randn(8, 8), torch.randint(0, 4, (8,))
        opt.zero_grad()
        nn.functional.cross_entropy(trained(x), y).backward()
        if order == "before":
            pruner.step()
            opt.step()
        else:
            opt.step()
            pruner.step()


def _said(fn) -> list[str]:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught if w.category is UserWarning]


def test_a_pruner_built_on_another_model_object_than_the_trained_one_is_warned():
    # The Pruner built, then the model built again (say, to load a checkpoint into) and trained: the Pruner masked
    # a model nothing trained, the trained one stayed dense (sparsity 0.0), and nothing was said.
    built = _mlp(8)
    pruner = sparsekit.Pruner(built, _RECIPE, steps_per_epoch=4)
    trained = _mlp(8)
    said = _said(lambda: _loop(built, pruner, 8, optimizer_model=trained))
    assert [m for m in said if "none holds the weight of '0'" in m and "stays dense" in m], said
    assert sparsekit.sparsity(trained) == 0.0


def test_a_run_shorter_than_the_check_window_is_judged_at_finalize():
    # pruner.step() before optimizer.step() in all 5 steps of a short run: the check waited for 8 and finalize
    # dropped it unjudged, so the model trained dense with no word.
    model = _mlp(8)
    pruner = sparsekit.Pruner(model, {**_RECIPE, "finetune": {"epochs": 1}}, steps_per_epoch=5)
    said = _said(lambda: (_loop(model, pruner, 6, order="before"), pruner.finalize()))
    assert [m for m in said if "ran before optimizer.step() in 5 of its first 5" in m], said


def test_a_short_run_in_the_right_order_on_the_right_model_is_not_warned():
    model = _mlp(8)
    pruner = sparsekit.Pruner(model, {**_RECIPE, "finetune": {"epochs": 1}}, steps_per_epoch=5)
    said = _said(lambda: (_loop(model, pruner, 5), pruner.finalize()))
    assert not [m for m in said if "pruner.step() ran" in m or "none holds" in m], said
    assert sparsekit.sparsity(model) > 0.3


@pytest.mark.parametrize("steps_per_epoch", [8, 1])
def test_pruner_step_once_per_epoch_is_warned(steps_per_epoch):
    # Called once per epoch: with steps_per_epoch=len(loader) the schedule ran 8x slower (finalize only said "the
    # run stopped at step 3"); with steps_per_epoch=1 the pruned weights left zero between calls. Neither was warned.
    model = _mlp(8)
    recipe = {**_RECIPE, "finetune": {"epochs": 3}}
    recipe["pruning"] = [{**_RECIPE["pruning"][0], "schedule": {"start_epoch": 0, "end_epoch": 2, "every": 1}}]
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=steps_per_epoch)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def run():
        for _ in range(3):
            for _ in range(8):
                x, y = torch.randn(8, 8), torch.randint(0, 4, (8,))
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
            pruner.step()
        pruner.finalize()

    said = _said(run)
    assert [m for m in said if "pruner.step() ran after up to 8 optimizer steps at a time" in m], said


def test_a_dense_warm_up_and_another_models_optimizer_are_not_taken_for_seldom_calls():
    model, other = _mlp(8), _mlp(8)
    pruner = sparsekit.Pruner(model, {**_RECIPE, "finetune": {"epochs": 3}}, steps_per_epoch=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    other_opt = torch.optim.SGD(other.parameters(), lr=0.1)

    def run():
        for step in range(20):
            x, y = torch.randn(8, 8), torch.randint(0, 4, (8,))
            for m, o in ((model, opt), (other, other_opt)):
                o.zero_grad()
                nn.functional.cross_entropy(m(x), y).backward()
                o.step()
            if step >= 8:  # dense warm-up for the first 8 steps
                pruner.step()
        pruner.finalize()

    said = _said(run)
    assert not [m for m in said if "pruner.step() ran" in m or "none holds" in m], said


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("rewrap", [False, True])
def test_a_ddp_wrapper_not_rebuilt_after_channel_removal_says_to_rewrap(monkeypatch, rewrap):
    # Forgetting sparsekit.distributed.rewrap after structured pruning removed channels under DDP failed at the next
    # forward with DDP's "parameters that were not used in producing loss ... find_unused_parameters=True", which
    # does not help; the error now names the remedy. (A one-process gloo group: the same DDP reducer.)
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import sparsekit.distributed

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = DDP(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))
        entry = {"method": "structured", "ratio": 0.5, "steps": 1, "schedule": {"start_epoch": 0, "end_epoch": 1}}
        recipe = {"version": 1, "finetune": {"epochs": 1}, "model": {"input_shape": [1, 8]}, "pruning": [entry]}
        pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.randn(8, 8), torch.randint(0, 4, (8,))

        def train(model, opt):
            for _ in range(3):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                pruner.step()
                if pruner.structure_changed:
                    if rewrap:
                        model = sparsekit.distributed.rewrap(model)
                    opt = pruner.update_optimizer(opt)

        if rewrap:
            train(model, opt)
            assert pruner.model[0].out_features == 8
            pruner.finalize()
        else:
            with pytest.raises(RuntimeError, match=r"still holds the parameters.*sparsekit\.distributed\.rewrap"):
                train(model, opt)
            assert pruner.model[0].out_features == 8
    finally:
        # gloo's worker thread frees each finished collective, which needs the GIL. The DDP wrapper (and its
        # Reducer, holding the process group) is freed when this function returns; the group's destructor then
        # joins that thread while holding the GIL. If the thread is still freeing the last allreduce, both wait
        # forever (seen twice in full-suite runs). Letting go of the GIL for a moment first lets the thread finish.
        time.sleep(0.1)
        dist.destroy_process_group()


def test_a_strong_proximal_group_lasso_raises_no_numpy_overflow_warning():
    # Once a unit was dead (norm 0), a shrink over ~4 (a strong strength, a large rate, a wide group) overflowed
    # 1 / tiny * shrink to -inf in numpy (clamped to 0, the right scale), and numpy's RuntimeWarning reached the user.
    import warnings

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 8, 5), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 4))
    entry = {"method": "l1", "strength": 20.0, "mode": "proximal", "group": "channel", "threshold": 1e-2}
    entry["layers"] = {"types": ["Conv1d"]}
    recipe = {"version": 1, "finetune": {"epochs": 2}, "model": {"input_shape": [1, 4, 20]}, "pruning": [entry]}
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for _ in range(12):
            opt.zero_grad()
            nn.functional.cross_entropy(model(torch.randn(8, 4, 20)), torch.randint(0, 4, (8,))).backward()
            opt.step()
            pruner.step()
    assert (model[0].weight.flatten(1).norm(dim=1) == 0).sum() >= 7
