"""Small faults a reviewer found with inputs sparsekit had not seen: a union field's error spoke pydantic's
words, a one-column output chosen as the logits failed without naming model.output, and a layer or file name
with two ``$`` made matplotlib parse mathtext and fail the whole plot."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sparsekit.plots import figures, render

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args, cwd, extra_path=""):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), extra_path) if p)}
    return subprocess.run(
        [sys.executable, "-m", "sparsekit", *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd,
        timeout=300,
    )  # fmt: skip


def _error_line(done) -> str:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), done.stderr
    return lines[0]


@pytest.mark.parametrize(("value", "got"), [("sparse", "text 'sparse'"), ("3", "a number 3"), ("null", "null")])
def test_a_union_field_names_what_it_takes_in_yaml_words(tmp_path, value, got):
    line = _error_line(
        _cli("validate", "lenet-gradual-magnitude-90", "--set", f"export.sparse_storage={value}", cwd=tmp_path)
    )
    assert f"export.sparse_storage: must be 'auto' or true or false (got {got})" in line
    assert "literal[" not in line and ".bool" not in line


def test_a_one_column_output_chosen_as_logits_names_model_output(tmp_path):
    (tmp_path / "twonet.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            class Two(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.fc1, self.head, self.score = nn.Linear(64, 32), nn.Linear(32, 10), nn.Linear(32, 1)

                def forward(self, x):
                    h = torch.relu(self.fc1(x.flatten(1)))
                    return self.head(h), self.score(h)

            def build():
                return Two()
            """
        )
    )
    (tmp_path / "r.yaml").write_text(
        "version: 1\nmodel: {input_shape: [1, 64]}\ndata: {source: digits}\nfinetune: {epochs: 1}\n"
        "pruning:\n  - {method: magnitude, sparsity: 0.5, schedule: oneshot, layers: [fc1]}\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        import twonet

        torch.save(twonet.build().state_dict(), tmp_path / "w.pt")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("twonet", None)
    args = ("prune", "w.pt", "r.yaml", "--arch", "twonet:build", "-o", "out")
    line = _error_line(_cli(*args, "--set", "model.output=1", cwd=tmp_path, extra_path=str(tmp_path)))
    assert "[2, 1], one class" in line and "model.output" in line
    assert not (tmp_path / "out" / "model.pt").exists()


def test_names_with_dollar_signs_are_drawn_as_text(tmp_path):
    layers = [
        {"name": r"$\frac{$", "sparsity": 0.5, "excluded": False},
        {"name": "a$b$c", "sparsity": 0.25, "excluded": False},
    ]
    data = {"layers": layers, "latency": {r"$\frac{$.onnx": {"1": 0.1}, "b$.onnx": {"1": 0.05}}}
    assert render(data, tmp_path) == ["layer_sparsity.png", "latency.png"]
    ticks = [t.get_text() for t in figures(data)["layer_sparsity.png"].axes[0].get_xticklabels()]
    assert ticks == [r"\$\frac{\$", r"a\$b\$c"]  # mathtext shows an escaped dollar as a dollar


def _plan_small_mlp(tmp_path: Path, entry: dict) -> tuple[dict, dict]:
    """``sparsekit.plan`` of a one-entry recipe on a 64-32-10 digits MLP saved in ``tmp_path/w.pt``: (recipe, plan)."""
    import sparsekit
    from examples.models import mlp

    torch.manual_seed(0)
    torch.save(mlp(in_features=64, hidden=[32]).state_dict(), tmp_path / "w.pt")
    recipe = {
        "version": 1,
        "model": {"input_shape": [1, 64], "kwargs": {"hidden": [32]}},
        "data": {"source": "digits"},
        "finetune": {"epochs": 1},
        "pruning": [entry],
    }
    return recipe, sparsekit.plan(recipe, tmp_path / "w.pt", arch="examples.models:mlp", steps_per_epoch=2)


def test_group_lasso_head_left_out_is_not_said_to_be_in_ignore(tmp_path):
    # validate said the l1 head was "in ignore"; l1 has no ignore key to put it in.
    _, res = _plan_small_mlp(tmp_path, {"method": "l1", "strength": 1.0e-3, "group": "row"})
    (row,) = [r for r in res["methods"][0]["left_out"] if r["name"] == "fc2"]
    assert "ignore" not in row["reason"].split(":")[0], row["reason"]
    assert "layers.include" in row["reason"]
    _, res = _plan_small_mlp(tmp_path, {"method": "structured", "ratio": 0.5, "round_to": None, "schedule": "oneshot"})
    (row,) = [r for r in res["methods"][0]["left_out"] if r["name"] == "fc2"]
    assert row["reason"].startswith("in ignore")  # structured's own ignore default: unchanged


def test_validate_warns_when_a_layer_would_lose_every_weight(tmp_path):
    import sparsekit

    # max_layer_sparsity 1 lets a layer be emptied (its default, halfway to 1, keeps one weight in every layer)
    entry = {"method": "magnitude", "sparsity": 0.999, "scope": "layer", "schedule": "oneshot", "max_layer_sparsity": 1}
    recipe, res = _plan_small_mlp(tmp_path, entry)
    assert res["schedule"]["final"]["emptied"] == ["fc2"]  # 320 weights keep round(0.32) = 0; fc1 keeps 2
    recipe["pruning"][0]["sparsity"] = 0.99  # fc2 keeps 3
    res = sparsekit.plan(recipe, tmp_path / "w.pt", arch="examples.models:mlp", steps_per_epoch=2)
    assert res["schedule"]["final"]["emptied"] == []
    (tmp_path / "r.yaml").write_text(
        "version: 1\nmodel: {input_shape: [1, 64], kwargs: {hidden: [32]}}\ndata: {source: digits}\n"
        "finetune: {epochs: 1}\npruning:\n  - {method: magnitude, sparsity: 0.999, scope: layer, schedule: oneshot, "
        "max_layer_sparsity: 1}\n"
    )
    done = _cli("validate", "r.yaml", "w.pt", "--arch", "examples.models:mlp", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # a Warning: line on stderr, as every command's warnings (it was a lowercase 'warning:' line on stdout)
    (warning,) = [ln for ln in done.stderr.splitlines() if ln.startswith("Warning:")]
    assert warning.startswith("Warning: fc2: no weight left after the run")
    assert "no weight left" not in done.stdout


@pytest.mark.parametrize("model_name", ["_TiedReshaped", "_TiedNoBias"])
def test_static_int8_files_of_tied_models_keep_their_layer_names_and_count_the_tie_once(tmp_path, model_name):
    import sparsekit
    from sparsekit.onnx.quantize import quantize_int8
    from tests import test_inspect

    torch.manual_seed(0)
    model = getattr(test_inspect, model_name)().eval()
    fp32, int8 = tmp_path / "m.onnx", tmp_path / "q.onnx"
    sparsekit.export_onnx(model, fp32, [1, 64], exporter="torchscript")
    quantize_int8(fp32, int8, calibration=[torch.randn(8, 64) for _ in range(4)])
    a, b = sparsekit.inspect(fp32), sparsekit.inspect(int8)

    def rows(res):
        return [(r["name"], r["params"], r.get("shared_with")) for r in res["layers"]]

    assert rows(b) == rows(a)
    assert b["params"] == a["params"] == sum(p.numel() for p in model.parameters())  # the shared weight once
    assert any(shared for _, _, shared in rows(b))
