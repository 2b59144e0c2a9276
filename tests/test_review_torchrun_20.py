"""Review (torchrun angle): sparsekit under torchrun, and users' own multi-process scripts."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from sparsekit.cli import main

RECIPE = """
data: {source: digits, batch_size: 64}
finetune: {epochs: 3, optimizer: {name: adam, lr: 0.002}}
pruning:
  - method: magnitude
    sparsity: 0.8
    schedule: {start_epoch: 0, end_epoch: 3, every: 0.3}
"""


def _tiny_mlp(tmp_path):
    import torch

    import sparsekit
    from examples.models import mlp

    torch.manual_seed(0)
    path = tmp_path / "mlp.pt"
    sparsekit.save_model(mlp(hidden=[16]), path, factory="examples.models:mlp", kwargs={"hidden": [16]})
    return path


def _validate(tmp_path, *extra: str):
    (tmp_path / "r.yaml").write_text(RECIPE)
    model = tmp_path / "mlp.pt" if (tmp_path / "mlp.pt").exists() else _tiny_mlp(tmp_path)
    args = ["validate", str(tmp_path / "r.yaml"), str(model), "--arch", "examples.models:mlp", *extra]
    return CliRunner().invoke(main, args)


def test_validate_started_by_torchrun_lays_the_schedule_out_in_each_processs_steps(tmp_path, monkeypatch):
    # `torchrun --nproc-per-node=2 -m sparsekit validate RECIPE MODEL` previews the same command's prune, whose ranks
    # each train a shard of the data: it showed the one-process schedule (23 steps, sparsity 0.531 after epoch 1)
    # where the run takes 12 steps per epoch and its report.json's history says 0.563.
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets; validate joins no process group
    two = _validate(tmp_path)
    assert two.exit_code == 0, two.output
    # 1437 training samples: 719 per rank, 12 batches of 64 (23 in one process)
    assert "schedule: 12 optimizer steps per epoch (one per training batch of each of the 2 processes' shards)" in (
        two.output
    ), two.output
    assert "finetune.max_steps_per_epoch" not in two.output
    assert "mask updated every 0.3 epochs (every 4 of the epoch's 12 steps)" in two.output, two.output
    # The history predicted on the run's step clock (one process: 0.531 after epoch 1)
    assert "as report.json's history will show it, after epoch 1: 0.563, 2: 0.770, 3: 0.800" in two.output, two.output


def test_a_usage_error_under_torchrun_says_which_rank_printed_it(monkeypatch):
    # Every rank prints its own Error line; rank 0's bare, the others' after "rank N: " (as every other error's), so
    # two identical unattributed lines no longer read as one process saying it twice.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    result = CliRunner().invoke(main, ["recipes", "--nope"])
    assert result.exit_code == 2
    assert result.output.startswith("Error: rank 1: No such option '--nope'"), result.output
    monkeypatch.setenv("RANK", "0")
    result = CliRunner().invoke(main, ["recipes", "--nope"])
    assert result.output.startswith("Error: No such option '--nope'"), result.output


def test_a_world_size_that_is_no_number_leaves_errors_one_line_not_a_traceback(tmp_path, monkeypatch):
    # Every Error line asks which rank printed it; an unreadable WORLD_SIZE there raised ValueError out of the error
    # handler: a traceback (exit 1) in place of the recipe's own message. It is no launch, as prune reads it too.
    (tmp_path / "bad.yaml").write_text("pruning:\n  - method: magnitude\n    sparsity: 1.5\n")
    monkeypatch.setenv("WORLD_SIZE", "auto")
    monkeypatch.setenv("RANK", "1")
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and "pruning[0].sparsity" in result.output, result.output
    assert "rank 1" not in result.output
    result = CliRunner().invoke(main, ["recipes", "--nope"])
    assert result.exit_code == 2 and result.output.startswith("Error: No such option"), result.output


def _removals(seed: int, monkeypatch) -> tuple[list, list]:
    """A Pruner's channel removals on weights seeded ``seed`` (a rank's, had it no DDP wrapper broadcasting rank 0's),
    and what it handed the cross-rank check at each check (as under torchrun)."""
    import torch

    import sparsekit
    from examples.models import mlp
    from sparsekit import pruner as pruner_module

    calls: list = []
    monkeypatch.setattr(pruner_module, "_distributed_active", lambda: True)
    monkeypatch.setattr(pruner_module._distributed, "check_masks", lambda *args: calls.append(args))
    torch.manual_seed(seed)
    model = mlp(hidden=[32, 16])
    recipe = {
        "finetune": {"epochs": 1},
        "pruning": [
            {"method": "structured", "ratio": 0.5, "layers": {"include": ["fc1"]}, "schedule": {"end_epoch": 0}}
        ],
    }
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 64)).sum().backward()
        opt.step()
        pruner.step()
        if pruner.structure_changed:
            opt = pruner.update_optimizer(opt)
    return pruner.pruning_history, calls


def test_ranks_that_removed_different_channels_are_a_divergence_error_not_a_silent_one(monkeypatch):
    # Structured pruning alone leaves no mask: the per-epoch checksum compared nothing, and ranks that removed
    # different channels (equal shapes) trained on, rank 0 saving a model the others did not have.
    import torch

    from sparsekit import distributed

    mine, calls = _removals(0, monkeypatch)
    theirs, _ = _removals(1, monkeypatch)
    assert mine != theirs
    assert calls and all(list(args[2]) == mine for args in calls)  # the removals go with every check
    monkeypatch.undo()

    # The check itself, as rank 0 sees it: the other rank's removals were the other seed's.
    peer: list = []
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "_collective_device", lambda: torch.device("cpu"))

    class Done:
        def wait(self, timeout=None):
            return True

    def all_reduce(t, op=None, async_op=False):
        if peer:
            t.copy_(torch.maximum(t, peer[0]))
        return Done()

    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    masks = {"fc2": torch.ones(16, 16, dtype=torch.bool)}
    distributed.check_masks(masks, "after step 2", theirs)  # no peer yet: records nothing, agrees
    peer.append(torch.cat([distributed._checksum(masks), distributed._removals_checksum(theirs)]))
    peer[0] = torch.cat([peer[0], -peer[0]])
    distributed.check_masks(masks, "after step 2", theirs)  # the same removals on both: no error
    with pytest.raises(distributed.DivergenceError, match="the ranks removed different channels after step 2"):
        distributed.check_masks(masks, "after step 2", mine)


def test_a_command_under_torchrun_prints_one_json_document_not_one_per_rank(tmp_path, monkeypatch):
    # `torchrun --nproc-per-node=2 -m sparsekit validate RECIPE --json` printed two documents on the stdout the ranks
    # share (a reader's json.loads failed); a failure already printed rank 0's alone.
    import json

    (tmp_path / "r.yaml").write_text(RECIPE)
    monkeypatch.setenv("WORLD_SIZE", "2")
    documents = []
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        result = CliRunner().invoke(main, ["validate", str(tmp_path / "r.yaml"), "--json"])
        assert result.exit_code == 0, result.output
        documents.append(result.stdout)
    assert json.loads(documents[0] + documents[1])["valid"] is True  # one document in all
    assert documents[1] == ""
