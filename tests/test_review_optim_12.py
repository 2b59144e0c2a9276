"""Review 12: sparsekit.Pruner inside a user's own training loop (optimizers, mixed precision, resumes)."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import sparsekit

pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))


def _batches(n: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(32 * n, 20, generator=gen), torch.randint(0, 4, (32 * n,), generator=gen)
    return [(x[i : i + 32], y[i : i + 32]) for i in range(0, 32 * n, 32)]


def _recipe(entry: dict, epochs: int = 3) -> dict:
    return {"version": 1, "model": {"input_shape": [1, 20]}, "finetune": {"epochs": epochs}, "pruning": [entry]}


def test_l1_penalty_target_resumes_bit_identically_on_a_fresh_model():
    # The user saw: a run resumed from pruner.state_dict() (Pruner built on a freshly initialized model, the
    # checkpoint's weights loaded after, as load_state_dict's docstring says) ended with other weights than the
    # run it resumed: the penalty's "counts as zero" level was measured again on the fresh model's weights.
    entry = {
        "method": "l1",
        "strength": 1e-3,
        "mode": "penalty",
        "target": 0.6,
        "schedule": {"start_epoch": 0, "end_epoch": 2},
        "layers": {"exclude": ["4"]},
    }
    batches = _batches()

    def train(pruner, model, opt, start, stop):
        for x, y in (batches * 3)[start:stop]:
            loss = nn.functional.cross_entropy(model(x), y) + pruner.penalty()
            loss.backward()
            opt.step()
            pruner.step()
            opt.zero_grad()

    torch.manual_seed(0)
    model = _mlp()
    pruner = sparsekit.Pruner(model, _recipe(entry), steps_per_epoch=len(batches))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    train(pruner, model, opt, 0, 12)
    buf = io.BytesIO()
    torch.save({"pruner": pruner.state_dict(), "model": model.state_dict(), "opt": opt.state_dict()}, buf)
    train(pruner, model, opt, 12, 24)
    straight = [p.detach().clone() for p in pruner.finalize().parameters()]

    torch.manual_seed(123)  # a restarted process: another initialization, overwritten by the checkpoint
    fresh = _mlp()
    ckpt = torch.load(io.BytesIO(buf.getvalue()))  # weights_only, torch's default
    resumed = sparsekit.Pruner(fresh, _recipe(entry), steps_per_epoch=len(batches))
    resumed.load_state_dict(ckpt["pruner"])
    fresh.load_state_dict(ckpt["model"])
    opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2, weight_decay=0.1)
    opt.load_state_dict(ckpt["opt"])
    train(resumed, fresh, opt, 12, 24)
    again = list(resumed.finalize().parameters())
    assert all(torch.equal(a, b) for a, b in zip(straight, again, strict=True))


def test_lbfgs_trains_the_new_parameters_after_channels_are_removed():
    # The user saw: with torch.optim.LBFGS (a closure), after structured pruning removed channels and
    # optimizer = pruner.update_optimizer(optimizer), the model stopped learning: LBFGS steps the list it kept
    # at construction (_params), which still held the removed parameters; only the unchanged last bias moved.
    torch.manual_seed(0)
    model = _mlp()
    entry = {"method": "structured", "ratio": 0.5, "schedule": {"start_epoch": 0, "end_epoch": 0}}
    pruner = sparsekit.Pruner(model, _recipe(entry), steps_per_epoch=4)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=3)
    for k, (x, y) in enumerate(_batches(4)):

        def closure(x=x, y=y, opt=opt):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.step(closure)
        pruner.step()
        if k > 0:  # the steps after the removal at step 1
            moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
            assert moved == list(before), moved
        if pruner.structure_changed:
            opt = pruner.update_optimizer(opt)
    assert model[0].weight.shape == (32, 20)


def test_structured_taylor_leaves_out_a_step_gradscaler_skipped():
    # The user saw: with torch.amp.GradScaler, one overflowed (skipped) step before a removal event made
    # structured `importance: taylor` keep the first half of the channels (a NaN ranking keeps them by position)
    # instead of the best ones. Such a step now adds nothing, as for method: gradient.
    entry = {
        "method": "structured",
        "ratio": 0.5,
        "importance": "taylor",
        "round_to": None,
        "schedule": {"start_epoch": 1, "end_epoch": 1},
    }
    batches = _batches()

    def kept_rows(factor: float) -> list[int]:
        torch.manual_seed(0)
        model = _mlp()
        pruner = sparsekit.Pruner(model, _recipe(entry, epochs=2), steps_per_epoch=len(batches))
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # weights stay as built: rows are found again by value
        scaler = torch.amp.GradScaler("cpu")
        dense = model[0].weight.detach().clone()
        for k, (x, y) in enumerate(batches):
            loss = nn.functional.cross_entropy(model(x), y) * (factor if k == 3 else 1.0)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            pruner.step()
            opt.zero_grad()
        assert pruner.structure_changed  # the removal, at the end of epoch 0 (step 8)
        return [i for i in range(64) if any(torch.equal(dense[i], row) for row in model[0].weight)]

    skipped = kept_rows(float("inf"))
    assert skipped == kept_rows(0.0)  # a finite step that adds nothing to the sums ranks the same
    assert skipped != list(range(32))


@pytest.mark.parametrize(
    "entry",
    [
        {"method": "magnitude", "sparsity": 0.8, "schedule": {"start_epoch": 0, "end_epoch": 2, "every": 0.25}},
        {
            "method": "l1",
            "strength": 0.01,
            "mode": "proximal",
            "target": 0.6,
            "schedule": {"start_epoch": 0, "end_epoch": 2},
        },
    ],
    ids=["magnitude", "l1"],
)
def test_accumulation_with_steps_per_epoch_of_the_loader_is_explained_at_finalize(entry):
    # The user saw, after a loop that ran all 3 epochs stepping every 4 batches with steps_per_epoch=len(loader):
    # "missed its target: ... the run stopped at step 6, before the schedule's end at step 16", which reads as a loop
    # that ended early. The warning now says what the steps were counted against, and the fix.
    batches = _batches()
    model = _mlp()
    pruner = sparsekit.Pruner(model, _recipe({**entry, "layers": {"exclude": ["4"]}}), steps_per_epoch=len(batches))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for k, (x, y) in enumerate(batches * 3):
        (nn.functional.cross_entropy(model(x), y) / 4).backward()
        if (k + 1) % 4 == 0:
            opt.step()
            pruner.step()
            opt.zero_grad()
    with pytest.warns(sparsekit.TargetMissedWarning) as caught:
        pruner.finalize()
    (message,) = [str(w.message) for w in caught if issubclass(w.category, sparsekit.TargetMissedWarning)]
    assert "epoch 0.75 at steps_per_epoch=8" in message
    assert "steps_per_epoch=len(train_loader) // k" in message


@pytest.mark.parametrize("set_to_none", [False, True])
def test_structured_taylor_with_gradients_zeroed_before_pruner_step_is_refused_with_the_fix(set_to_none):
    # The user saw, zeroing the gradients before pruner.step(): with zero_grad(set_to_none=False) the removal ran on
    # all-zero scores and kept the first half of each layer's channels without a word; with set_to_none=True a
    # TargetError told them to call loss.backward(), which they did. Both now name the order to call things in.
    entry = {
        "method": "structured",
        "ratio": 0.5,
        "importance": "taylor",
        "schedule": {"start_epoch": 1, "end_epoch": 1},
    }
    model = _mlp()
    pruner = sparsekit.Pruner(model, _recipe(entry, epochs=2), steps_per_epoch=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with pytest.raises(sparsekit.TargetError) as err:
        for x, y in _batches():
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=set_to_none)
            pruner.step()
    assert "'taylor' needs gradients" in str(err.value)
    assert "before optimizer.zero_grad()" in str(err.value)
    assert model[0].weight.shape == (64, 20)  # nothing removed on zero scores


def test_structurally_pruned_model_loads_and_prunes_under_inference_mode(tmp_path):
    # The user saw, under torch.inference_mode() (a serving or evaluation function): load_model of a structurally
    # pruned checkpoint failed with "the checkpoint was pruned from a different architecture"; a structured entry's
    # finalize() there removed nothing and l1's remove_dead kept every zeroed unit, blaming constants it could not
    # fold. Tracing (torch-pruning's graph) recorded nothing there.
    from examples.models import mlp

    x = torch.randn(3, 20)
    kwargs = {"in_features": 20, "hidden": [64, 32], "num_classes": 4}
    dense = mlp(**kwargs)
    with torch.inference_mode():
        pruner = sparsekit.Pruner(dense, _recipe({"method": "structured", "ratio": 0.5}), steps_per_epoch=1)
        model = pruner.finalize()
    assert model.fc1.weight.shape[0] == 32
    path = sparsekit.save_model(
        model, tmp_path / "pruned.pt", factory="examples.models:mlp", kwargs=kwargs, pruner=pruner
    )
    with torch.inference_mode():
        loaded = sparsekit.load_model(path, arch="examples.models:mlp")
        assert torch.equal(loaded(x), model(x))

    torch.manual_seed(0)
    net = _mlp()
    entry = {"method": "l1", "strength": 0.01, "mode": "proximal", "group": "row", "target": 0.5}
    pruner = sparsekit.Pruner(
        net, _recipe({**entry, "schedule": {"start_epoch": 0, "end_epoch": 2}}), steps_per_epoch=8
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for x, y in _batches() * 3:
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        pruner.step()
        opt.zero_grad()
    with torch.inference_mode():
        out = pruner.finalize()
    assert out[0].weight.shape[0] < 64 and not pruner.methods[0].report().get("cannot_remove")


def _stale_warnings(run) -> list[str]:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
    return [str(w.message) for w in caught if "optimizer was not updated" in str(w.message)]


@pytest.mark.parametrize("how", ["rebuilt", "kept"])
def test_an_optimizer_rebuilt_after_channel_removal_is_not_called_stale(how):
    # The user saw, rebuilding the optimizer over model.parameters() when pruner.structure_changed (instead of
    # pruner.update_optimizer): "channels were removed ... but the optimizer was not updated", which it was. The
    # warning is now kept for an optimizer that still holds the removed parameters.
    entry = {"method": "structured", "ratio": 0.5, "steps": 2, "schedule": {"start_epoch": 0, "end_epoch": 2}}
    model = _mlp()
    pruner = sparsekit.Pruner(model, _recipe(entry), steps_per_epoch=8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def run():
        nonlocal opt
        for x, y in _batches() * 3:
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            pruner.step()
            opt.zero_grad()
            if pruner.structure_changed and how == "rebuilt":
                opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    said = _stale_warnings(run)
    assert len(said) == (0 if how == "rebuilt" else 1), said


def test_structure_changed_goes_back_to_false_once_a_rebuilt_optimizer_stepped():
    # A loop that rebuilds its optimizer when pruner.structure_changed (which the docstring allows) rebuilt it at
    # every step after the first removal, losing its momentum each time: the flag stayed True
    entry = {"method": "structured", "ratio": 0.5, "steps": 2, "schedule": {"start_epoch": 0, "end_epoch": 2}}
    model = _mlp()
    pruner = sparsekit.Pruner(model, _recipe(entry), steps_per_epoch=8)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    rebuilt, removals = 0, 0
    for x, y in _batches() * 3:
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        before = len(pruner.pruning_history)
        pruner.step()
        removals += len(pruner.pruning_history) > before
        opt.zero_grad()
        if pruner.structure_changed:
            rebuilt += 1
            opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    assert removals == 2 and rebuilt == removals  # once per removal event, not once per step after the first


def test_an_optimizer_built_after_a_structured_resume_is_not_called_stale():
    entry = {"method": "structured", "ratio": 0.5, "schedule": {"start_epoch": 0, "end_epoch": 0}}
    model = _mlp()
    pruner = sparsekit.Pruner(model, _recipe(entry), steps_per_epoch=8)
    pruner.step()  # the removal
    state, weights = pruner.state_dict(), model.state_dict()
    fresh = _mlp()
    resumed = sparsekit.Pruner(fresh, _recipe(entry), steps_per_epoch=8)
    resumed.load_state_dict(state)
    fresh.load_state_dict(weights)
    opt = torch.optim.Adam(fresh.parameters(), lr=1e-2)  # built after the replay: over the new parameters

    def run():
        for x, y in _batches(2):
            nn.functional.cross_entropy(fresh(x), y).backward()
            opt.step()
            resumed.step()
            opt.zero_grad()

    assert _stale_warnings(run) == []
