"""Follow-ups on models whose forward takes several inputs (review angle multiinput2)."""

from __future__ import annotations

import warnings

import torch
from torch import nn

import sparsekit


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.b(torch.relu(self.a(x))) * m))


def _head_warnings(layers: dict) -> list[str]:
    recipe = {"pruning": [{"method": "l1", "group": "row", "strength": 0.01, "layers": layers}]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sparsekit.Pruner(_TwoInputs(), recipe, 10)
    return [str(w.message) for w in caught if "could not find the classifier head" in str(w.message)]


def test_l1_head_warning_silent_when_the_recipe_already_excludes_layers() -> None:
    assert _head_warnings({"exclude": ["head"]}) == []
    # without an exclude the head cannot be told and is pruned: the warning stays
    assert len(_head_warnings({})) == 1


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * scale.unsqueeze(1)


def test_export_takes_a_one_value_per_sample_input_among_several(tmp_path) -> None:
    import onnx

    info = sparsekit.export_onnx(_Scaled(), tmp_path / "m.onnx", input_shape=[[1, 8], [1]], exporter="torchscript")
    assert info["parity"]["ok"]
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert [len(i.type.tensor_type.shape.dim) for i in graph.input] == [2, 1]


class _TokensLengths(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.fc = nn.Linear(16, 3)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(tokens).sum(1) / lengths.unsqueeze(1))


def test_export_feeds_token_ids_to_the_input_of_an_embedding_among_several(tmp_path) -> None:
    import onnx

    path = tmp_path / "m.onnx"
    info = sparsekit.export_onnx(_TokensLengths(), path, input_shape=[[1, 8], [1]], exporter="torchscript")
    assert info["parity"]["ok"]
    types = {i.name: i.type.tensor_type.elem_type for i in onnx.load(str(path)).graph.input}
    assert types == {"tokens": onnx.TensorProto.INT64, "lengths": onnx.TensorProto.FLOAT}


def test_sensitivity_names_a_set_only_when_it_left_no_entry_to_analyse(tmp_path) -> None:
    from click.testing import CliRunner

    from sparsekit.cli import main

    recipe = tmp_path / "l1.yaml"
    recipe.write_text(
        "data: {source: digits}\nfinetune: {epochs: 1}\npruning: [{method: l1, strength: 1.0e-3}]\n"
        "benchmark: {enabled: false}\n"
    )
    model = tmp_path / "m.pt"
    torch.save(nn.Sequential(nn.Linear(64, 10)), model)

    def line(override: str) -> str:
        args = ["sensitivity", str(model), str(recipe), "--set", override, "-o", str(tmp_path / "s")]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        (text,) = result.stderr.strip().splitlines()
        return text

    # the strength does not decide which methods the list holds: the file alone is to blame
    assert line("pruning.0.strength=0.01").startswith(f"Error: {recipe}: pruning: no magnitude")
    assert line("pruning.0.method=l1").startswith(f"Error: {recipe} with --set pruning.0.method=l1: pruning: no")


def test_sensitivity_table_lists_an_embedding_as_left_out() -> None:
    from sparsekit.sensitivity import analyze

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(20, 8), nn.Flatten(), nn.Linear(32, 16), nn.BatchNorm1d(16), nn.Linear(16, 3))
    batch = (torch.randint(0, 20, (16, 4)), torch.randint(0, 3, (16,)))
    recipe = {"pruning": [{"method": "magnitude", "sparsity": "auto", "target": 0.5}]}
    table = analyze(model, recipe, [batch], grid={"unstructured": [0.5]}, input_shape=[1, 4])
    left = {row.name: row.reason for row in table.left_out}
    assert list(left) == ["0"] and "embeddings are lookup tables" in left["0"]  # the BatchNorm is no weight to list
