"""Review from a new user's first hour with an installed wheel: one's own 1-D CNN, a shipped recipe adapted."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner
from torch import nn

from sparsekit.cli import main
from tests.conftest import assert_bad_input

SEQNET = """
from torch import nn


class SeqNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(3, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.conv2(self.conv1(x).relu()).relu().mean(-1))
"""


def test_include_matching_layers_that_types_leaves_out_names_types(tmp_path, monkeypatch):
    # A shipped CNN recipe (types: [Conv2d, Linear], include: conv*) on one's own Conv1d model was told that
    # 'conv*' matches no layer and to rename the include, although conv1 and conv2 match it: the types left
    # them out. The error now says so and gives the types override.
    from tests.conftest import user_module

    seqnet = user_module(tmp_path, monkeypatch, "seqnet_review16", SEQNET)
    monkeypatch.chdir(tmp_path)
    torch.save(seqnet.SeqNet().state_dict(), tmp_path / "w.pt")
    (tmp_path / "r.yaml").write_text(
        "version: 1\nmodel: {input_shape: [1, 3, 40]}\ndata: {source: synthetic}\n"
        "pruning:\n  - method: magnitude\n    sparsity: 0.5\n    schedule: oneshot\n"
        '    layers: {include: ["conv*"], types: [Conv2d, Linear]}\n'
    )
    args = ["validate", "r.yaml", "w.pt", "--arch", "seqnet_review16:SeqNet"]
    line = assert_bad_input(CliRunner().invoke(main, args), "pruning[0].layers.types", "Conv1d", "conv1 (Conv1d)")
    assert "name this model's layers" not in line
    override = line.split("--set ", 1)[1].strip("'")
    assert override.startswith("pruning.0.layers.types=")
    assert json.loads(override.split("=", 1)[1]) == ["Conv1d", "Conv2d", "Linear"]
    # The override it gives works as written.
    ok = CliRunner().invoke(main, [*args, "--set", override])
    assert ok.exit_code == 0, ok.output


def test_include_matching_nothing_still_lists_layers():
    # The general message is kept where the name itself matches no prunable layer.
    from sparsekit.errors import TargetError
    from sparsekit.layers import select_layers
    from sparsekit.recipe import LayerSelect

    model = nn.Sequential(nn.Conv1d(3, 4, 3), nn.Linear(4, 2))
    try:
        select_layers(model, LayerSelect(include=["fc1"]), "pruning[0].layers")
    except TargetError as e:
        assert "matches no layer of types" in str(e) and "name this model's layers" in str(e)
    else:
        raise AssertionError("no error")


def test_recipe_only_validate_refuses_data_path_prune_refuses(tmp_path, monkeypatch):
    # `sparsekit validate r.yaml` said "valid" for a recipe whose data.source led outside its folder (../x.npz, an
    # absolute path) or into a hidden folder, which prune then refused: the path checks need neither the file nor
    # torch, so recipe-only validate runs them too.

    work = tmp_path / "work"
    (work / ".hidden").mkdir(parents=True)
    monkeypatch.chdir(work)
    body = "version: 1\nmodel: {{input_shape: [1, 3, 40]}}\ndata: {{source: {src}}}\n"
    for src, needle in (
        ("../outside.npz", "outside the recipe's folder"),
        (str(tmp_path / "abs.npz"), "outside the recipe's folder"),
        (".hidden/x.npz", "hidden"),
    ):
        (work / "r.yaml").write_text(body.format(src=src))
        result = CliRunner().invoke(main, ["validate", "r.yaml"])
        assert_bad_input(result, "r.yaml: data.source", needle)
        # the remedy is one this command takes (it said --data, which validate refuses without MODEL)
        assert f"name it yourself: --set data.source={src}" in result.output, result.output
    # A file in the folder, or one the user names this run, is valid as before.
    (work / "r.yaml").write_text(body.format(src="inside.npz"))
    assert CliRunner().invoke(main, ["validate", "r.yaml"]).exit_code == 0
    (work / "r.yaml").write_text(body.format(src="../outside.npz"))
    ok = CliRunner().invoke(main, ["validate", "r.yaml", "--set", "data.source=../outside.npz"])
    assert ok.exit_code == 0, ok.output


def test_arch_naming_a_missing_callable_lists_what_the_module_defines(tmp_path, monkeypatch):
    # `--arch seqnet:Nope` said only "module 'seqnet' has no 'Nope'" (no near name to suggest): the user had to
    # open the file to find what to name. The error now lists the module's own functions and classes.
    from tests.conftest import user_module

    seqnet = user_module(tmp_path, monkeypatch, "seqnet_review16b", SEQNET)
    monkeypatch.chdir(tmp_path)
    torch.save(seqnet.SeqNet().state_dict(), tmp_path / "w.pt")
    args = ["export", "w.pt", "--input-shape", "1,3,40", "-o", "m.onnx", "--arch"]
    line = assert_bad_input(CliRunner().invoke(main, [*args, "seqnet_review16b:Build"]), "it defines SeqNet")
    assert "nn" not in line.split("defines", 1)[1]  # imported names (torch's nn) are not the module's own
    # A near name is still suggested as before.
    assert_bad_input(CliRunner().invoke(main, [*args, "seqnet_review16b:SeqNt"]), "did you mean 'SeqNet'?")
