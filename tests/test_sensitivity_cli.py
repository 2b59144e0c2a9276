"""`sparsekit sensitivity`, `sparsity: auto` in `sparsekit prune` and `validate`: files, resume, refusals."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import FAST, assert_bad_input

import sparsekit.sensitivity as sens
from sparsekit.cli import main

MLP = ("--arch", "examples.models:mlp")
AUTO = (
    "data: {source: digits}\nfinetune: {epochs: 2, optimizer: {name: adam, lr: 0.002}}\n"
    "pruning: [{method: magnitude, sparsity: auto, target: 0.9,"
    " schedule: {start_epoch: 0, end_epoch: 1, every: 0.5}}]\n"
    "benchmark: {enabled: false}\n"
)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def auto_recipe(tmp_path):
    path = tmp_path / "auto.yaml"
    path.write_text(AUTO)
    return path


class StopAfter:
    """KeyboardInterrupt on the n-th evaluation inside the sensitivity analysis; counts the calls."""

    def __init__(self, monkeypatch, n: int | None) -> None:
        self.real, self.calls, self.n = sens.evaluate, 0, n
        monkeypatch.setattr(sens, "evaluate", self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.real(*args, **kwargs)


def test_sensitivity_writes_the_table_ranking_and_allocation(tmp_path, mlp_checkpoint, auto_recipe):
    out = tmp_path / "sens"
    result = run("sensitivity", mlp_checkpoint, auto_recipe, *MLP, "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    names = [r["layer"] for r in doc["ranking"]]
    assert sorted(names) == ["fc1", "fc2", "fc3"]
    scores = [r["score"] for r in doc["ranking"]]
    assert scores == sorted(scores, reverse=True)
    table = sens.SensitivityTable.load(out / "sensitivity.json")
    assert table.complete() and [r.name for r in table.ranking()] == names
    assert (out / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "sensitivity.md").read_text().startswith("# Sensitivity analysis")
    entry = json.loads((out / "allocation.json").read_text())["entries"]["0"]
    values = entry["values"]
    assert set(values) == {"fc1", "fc2", "fc3"} and len(set(values.values())) > 1  # not uniform
    assert entry["reached"]["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert entry["predicted_loss_increase"] <= entry["uniform_loss_increase"]


def test_an_interrupted_analysis_resumes_without_redoing_probes(tmp_path, mlp_checkpoint, auto_recipe, monkeypatch):
    out = tmp_path / "sens"
    stop = StopAfter(monkeypatch, 6)  # dense + 4 probes done, the 5th interrupted
    first = run("sensitivity", mlp_checkpoint, auto_recipe, *MLP, "-o", out, "--no-progress")
    assert first.exit_code == 130 and "--resume" in first.stderr
    partial = sens.SensitivityTable.load(out / "sensitivity.partial.json")  # the finished files come at the end
    assert partial.probes_done() == 4 and not partial.complete() and not (out / "sensitivity.json").exists()
    again = run("sensitivity", mlp_checkpoint, auto_recipe, *MLP, "-o", out, "--no-progress")
    assert_bad_input(again, str(out), "--resume", "--overwrite")  # no silent restart over it
    stop.n, stop.calls = None, 0
    resumed = run("sensitivity", mlp_checkpoint, auto_recipe, *MLP, "-o", out, "--resume", "--no-progress")
    assert resumed.exit_code == 0, resumed.stderr
    total = partial.probes_total()
    assert stop.calls == total - 4  # neither the dense model nor the four finished probes again
    assert sens.SensitivityTable.load(out / "sensitivity.json").complete()
    assert not (out / "sensitivity.partial.json").exists()


def test_files_sparsekit_did_not_write_are_never_replaced(tmp_path, mlp_checkpoint, auto_recipe):
    out = tmp_path / "sens"
    out.mkdir()
    (out / "sensitivity.md").write_text("my notes\n")
    result = run("sensitivity", mlp_checkpoint, auto_recipe, *MLP, "-o", out, "--overwrite")
    assert_bad_input(result, "sensitivity.md", "nothing there is replaced")
    assert (out / "sensitivity.md").read_text() == "my notes\n"


def test_overwrite_replaces_only_unchanged_files_of_its_own_and_an_interrupt_keeps_them(
    tmp_path, mlp_checkpoint, auto_recipe, monkeypatch
):
    # Ownership was read from the content (a heading, a key): an edited sensitivity.md, or one the user wrote with
    # the same heading, was replaced by --overwrite; and the earlier files were deleted before the analysis ran, so
    # a Ctrl-C lost them.
    out = tmp_path / "sens"
    assert run("sensitivity", mlp_checkpoint, auto_recipe, *MLP, "-o", out, "--no-progress").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    StopAfter(monkeypatch, 3)
    stopped = run("sensitivity", mlp_checkpoint, auto_recipe, *MLP, "-o", out, "--overwrite", "--no-progress")
    assert stopped.exit_code == 130
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.name not in ("sensitivity.partial.json",)}
    assert {k: v for k, v in after.items() if not k.startswith(".")} == {
        k: v for k, v in before.items() if not k.startswith(".")
    }

    # Ctrl-C while the finished files are written (the plot takes seconds): the earlier files stay, all of them,
    # and --resume finishes from the complete partial table (a folder neither --resume nor --overwrite took)
    def interrupted_plot(self, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(sens.SensitivityTable, "write_plot", interrupted_plot)
    stopped = run("sensitivity", mlp_checkpoint, auto_recipe, *MLP, "-o", out, "--overwrite", "--no-progress")
    assert stopped.exit_code == 130
    monkeypatch.undo()
    now = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".") and "partial" not in p.name}
    assert now == {k: v for k, v in before.items() if not k.startswith(".")}
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    counted = StopAfter(monkeypatch, None)
    assert run("sensitivity", mlp_checkpoint, auto_recipe, *MLP, "-o", out, "--resume", "--no-progress").exit_code == 0
    assert counted.calls == 0  # every probe was in the partial table
    monkeypatch.undo()
    assert not (out / "sensitivity.partial.json").exists()
    assert run("sensitivity", mlp_checkpoint, auto_recipe, *MLP, "-o", out, "--overwrite").exit_code == 0
    assert not (out / "sensitivity.partial.json").exists()
    md = out / "sensitivity.md"
    md.write_text(md.read_text() + "my note\n")  # edited since sparsekit wrote it
    assert_bad_input(
        run("sensitivity", mlp_checkpoint, auto_recipe, *MLP, "-o", out, "--overwrite"), "sensitivity.md", "changed"
    )
    assert md.read_text().endswith("my note\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "sensitivity.md").write_text("# Sensitivity analysis of my model, by hand\n")  # sparsekit's heading
    result = run("sensitivity", mlp_checkpoint, auto_recipe, *MLP, "-o", mine, "--overwrite")
    assert_bad_input(result, "sensitivity.md", "no .sensitivity-manifest.json", "move them away")
    assert (mine / "sensitivity.md").read_text().startswith("# Sensitivity analysis of my model")


def test_sensitivity_refuses_a_folder_holding_other_files(tmp_path, mlp_checkpoint, auto_recipe):
    # It wrote its four files into any folder without them (a package's source folder, in a user's test).
    out = tmp_path / "project"
    out.mkdir()
    (out / "train.py").write_text("print('mine')\n")
    result = run("sensitivity", mlp_checkpoint, auto_recipe, *MLP, "-o", out)
    assert_bad_input(result, "project: holds train.py, which sparsekit sensitivity did not write")
    assert sorted(p.name for p in out.iterdir()) == ["train.py"]
    # ... but not for the temp file a killed write of its own table left
    (out / "train.py").unlink()
    (out / ".sensitivity.json.ab12cd34.sparsekit.tmp").write_text("{")
    assert run("sensitivity", mlp_checkpoint, auto_recipe, *MLP, "-o", out).exit_code == 0


def test_prune_with_auto_allocates_per_layer_and_resume_reuses_it(tmp_path, mlp_checkpoint, auto_recipe, monkeypatch):
    out = tmp_path / "o"
    result = run("prune", mlp_checkpoint, auto_recipe, *MLP, "-o", out, *FAST)
    assert result.exit_code == 0, result.stderr
    assert "auto -> per-layer values" in result.stderr
    report = json.loads((out / "report.json").read_text())
    spec = report["recipe"]["pruning"][0]
    allocation = json.loads((out / "allocation.json").read_text())
    assert spec["layer_sparsity"] == allocation["entries"]["0"]["values"]
    rows = {r["name"]: r for r in report["layers"]}
    for name, value in spec["layer_sparsity"].items():  # exact per layer, so exact in total
        assert rows[name]["params"] - rows[name]["nonzero_params"] == round(value * rows[name]["params"])
    assert report["methods"][0]["achieved"] == pytest.approx(0.9, abs=1e-3)
    assert (out / "sensitivity.json").is_file()
    # A resume takes the allocation the run started with: no second analysis.
    monkeypatch.setattr(sens, "analyze", lambda *a, **k: pytest.fail("analysed again on resume"))
    again = run("prune", mlp_checkpoint, auto_recipe, *MLP, "-o", out, "--resume", "--set", "finetune.epochs=3",
               "--allow-change", "finetune.epochs", *FAST)  # fmt: skip
    assert again.exit_code == 0, again.stderr
    assert (
        json.loads((out / "report.json").read_text())["recipe"]["pruning"][0]["layer_sparsity"]
        == spec["layer_sparsity"]
    )


def test_validate_with_a_model_shows_the_values_auto_would_choose(mlp_checkpoint, auto_recipe):
    result = run("validate", auto_recipe, mlp_checkpoint, *MLP, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    values = doc["auto_allocation"]["entries"]["0"]["values"]
    (row,) = doc["allocation"]
    assert row["layer_values"] == values and not row["auto"]
    text = run("validate", auto_recipe, mlp_checkpoint, *MLP)
    assert "fc1:" in text.stdout and "auto -> per-layer values" in text.stdout
    without_model = run("validate", auto_recipe)
    assert without_model.exit_code == 0 and "sensitivity analysis" in without_model.stdout


def test_prune_resume_refuses_an_allocation_made_for_another_target(tmp_path, mlp_checkpoint, auto_recipe, monkeypatch):
    from conftest import InterruptOnEvaluate

    out = tmp_path / "o"
    interrupt = InterruptOnEvaluate(monkeypatch, 2)  # after the allocation, at the end of epoch 1
    assert run("prune", mlp_checkpoint, auto_recipe, *MLP, "-o", out, *FAST).exit_code == 130
    interrupt.restore()
    again = run(
        "prune", mlp_checkpoint, auto_recipe, *MLP, "-o", out, "--resume", "--set", "pruning.0.target=0.5", *FAST
    )
    assert_bad_input(again, "allocation.json", "another pruning section", "--overwrite")


def test_sensitivity_resume_refuses_another_validation_split(tmp_path, mlp_checkpoint, auto_recipe, monkeypatch):
    out = tmp_path / "sens"
    StopAfter(monkeypatch, 4)
    assert run("sensitivity", mlp_checkpoint, auto_recipe, *MLP, "-o", out, "--no-progress").exit_code == 130
    monkeypatch.undo()
    other_seed = run("sensitivity", mlp_checkpoint, auto_recipe, *MLP, "-o", out, "--resume", "--set", "seed=1")
    assert_bad_input(other_seed, "another setup", "validation batches differ", "seed 0 then, 1 now")
    # Each difference by name (it said "the validation data ... or the analysed entries' settings differ").
    other = run(
        "sensitivity", mlp_checkpoint, auto_recipe, *MLP, "-o", out, "--resume",
        "--set", "data.batch_size=16", "--set", "pruning.0.layers.exclude=[fc3]",
    )  # fmt: skip
    line = assert_bad_input(other, "data.batch_size 64 then, 16 now", "pruning[0].layers.exclude: [] then, ['fc3'] now")
    assert "seed 0" not in line and "types" not in line, line


def test_a_recipe_with_nothing_to_analyse_leaves_no_folder(tmp_path, mlp_checkpoint):
    (tmp_path / "l1.yaml").write_text("data: {source: digits}\npruning: [{method: l1, strength: 0.001}]\n")
    result = run("sensitivity", mlp_checkpoint, tmp_path / "l1.yaml", *MLP, "-o", tmp_path / "sens")
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert not (tmp_path / "sens").exists()


def test_sensitivity_never_writes_into_home_or_an_inputs_folder(tmp_path, mlp_checkpoint, auto_recipe, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    assert_bad_input(run("sensitivity", mlp_checkpoint, auto_recipe, *MLP, "-o", home), "your home folder")
    # mlp_checkpoint lies in tmp_path: an output folder holding it is refused, and nothing is written.
    assert_bad_input(run("sensitivity", mlp_checkpoint, auto_recipe, *MLP, "-o", tmp_path), "contains the input")
    assert not list(home.iterdir()) and not (tmp_path / "sensitivity.json").exists()


def test_a_target_macs_entry_is_checked_against_its_target_and_says_how_it_was_allocated(tmp_path):
    # The allocated entry (per-layer ratios, target_macs gone) was all report.json knew: its only check compared the
    # allocated ratio with itself, and the allocation's note (exact counts used) reached neither the terminal
    # summary nor report.md.
    import sparsekit
    from examples.models import small_cnn

    model_path = tmp_path / "cnn.pt"
    sparsekit.save_model(
        small_cnn(image_size=8, width=16), model_path, factory="examples.models:small_cnn",
        kwargs={"image_size": 8, "width": 16}, input_shape=[1, 1, 8, 8],
    )  # fmt: skip
    recipe = tmp_path / "macs.yaml"
    recipe.write_text(
        "data: {source: digits}\nfinetune: {epochs: 1, max_steps_per_epoch: 3}\n"
        "pruning: [{method: structured, ratio: auto, target_macs: 0.2, round_to: 16, ignore: [fc2]}]\n"
        "benchmark: {enabled: false}\n"
    )
    out = tmp_path / "o"
    result = run("prune", model_path, recipe, "--arch", "examples.models:small_cnn", "-o", out, *FAST)
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["recipe_asked"][0]["target_macs"] == 0.2 and report["recipe"]["pruning"][0]["target_macs"] is None
    (check,) = [c for c in report["summary"]["targets"] if c["target"] == "target_macs"]
    assert check["asked"] == 0.2
    # The allocated ratio is sparsekit's choice, not a target of the user's: it was checked (and could miss).
    assert [c["target"] for c in report["summary"]["targets"]] == ["target_macs"]
    assert check["achieved"] == pytest.approx(report["pruned"]["macs"] / report["dense"]["macs"])
    assert check["met"] == (check["achieved"] <= 0.2 * 1.02)
    # The recipe line speaks of the target, not of the placeholder ratio the allocated entry holds.
    line = report["summary"]["recipe"][0]
    assert (
        line.startswith("pruning[0] structured: remove output channels down to MACs 0.2x") and "own ratios" not in line
    )
    allocation = json.loads((out / "allocation.json").read_text())
    said = [e["note"] for e in allocation["entries"].values() if e.get("note")]
    assert said  # 16-channel blocks cannot reach 0.2 of this model's MACs: exact counts, and the run says so
    for note in said:  # whatever the allocation had to say is in the report's notes and report.md too
        assert any(note in n for n in report["notes"])
        assert note in (out / "report.md").read_text()
    # ... and its comparison with a uniform choice, which only the terminal showed
    assert any("predicted loss increase" in n and "uniform" in n for n in report["notes"]), report["notes"]
    # The ratio in the per-method line is sparsekit's choice for the target, not something the user asked.
    (method,) = report["summary"]["methods"]
    assert method["allocated"] is True
    assert "chosen for its target" in (out / "report.md").read_text() and "chosen for its target" in result.output


def test_sensitivity_records_the_data_it_used_and_a_resume_names_another(
    tmp_path, mlp_checkpoint, auto_recipe, monkeypatch
):
    import numpy as np

    rng = np.random.default_rng(0)
    for name in ("a.npz", "b.npz"):
        np.savez(tmp_path / name, x=rng.standard_normal((200, 64)).astype(np.float32), y=rng.integers(0, 10, 200))
    out = tmp_path / "sens"
    StopAfter(monkeypatch, 4)
    first = run("sensitivity", mlp_checkpoint, auto_recipe, *MLP, "-o", out, "--data", tmp_path / "a.npz")
    assert first.exit_code == 130, first.stderr
    monkeypatch.undo()
    table = sens.SensitivityTable.load(out / "sensitivity.partial.json")
    assert table.data_settings["data.source"] == str(tmp_path / "a.npz")  # it recorded the recipe's 'digits'
    other = run("sensitivity", mlp_checkpoint, auto_recipe, *MLP, "-o", out, "--resume", "--data", tmp_path / "b.npz")
    assert_bad_input(other, f"data.source '{tmp_path / 'a.npz'}' then, '{tmp_path / 'b.npz'}' now")


def test_the_printed_ranking_says_when_it_leaves_rows_out(tmp_path, auto_recipe):
    # Nine layers: the first three and the last three were printed with nothing between, so the 7th read as 4th.
    import sparsekit
    from examples.models import mlp

    model = tmp_path / "deep.pt"
    sparsekit.save_model(mlp(hidden=[8] * 8), model, factory="examples.models:mlp", input_shape=[1, 64])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(auto_recipe.read_text())
    result = run("sensitivity", model, recipe, *MLP, "--kwargs", '{"hidden": [8, 8, 8, 8, 8, 8, 8, 8]}', "-o",
                 tmp_path / "s", "--max-batches", "1", "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "… 3 more (sensitivity.md ranks them all)" in result.stdout
    assert result.stdout.index("most") < result.stdout.index("… 3 more") < result.stdout.index("least")


def test_files_the_user_puts_in_the_folder_while_it_runs_are_not_replaced(
    tmp_path, mlp_checkpoint, auto_recipe, monkeypatch
):
    # Found by review: the folder was checked only at the start, so a sensitivity.md the user wrote there during
    # the analysis was replaced and an allocation.json of theirs deleted. Checked again before the results move in.
    out = tmp_path / "s"
    real = sens.evaluate
    mine = {"sensitivity.md": "MY NOTES", "allocation.json": '{"mine": 1}'}

    def evaluate_and_meddle(*args, **kwargs):
        if out.is_dir():
            for name, text in mine.items():
                (out / name).write_text(text)
        return real(*args, **kwargs)

    monkeypatch.setattr(sens, "evaluate", evaluate_and_meddle)
    assert_bad_input(run("sensitivity", mlp_checkpoint, auto_recipe, *MLP, "-o", out), "did not write")
    assert {name: (out / name).read_text() for name in mine} == mine


@pytest.mark.parametrize("option", [(), ("--resume",), ("--overwrite",)])
def test_a_second_analysis_into_a_folder_one_is_writing_is_refused(
    tmp_path, mlp_checkpoint, auto_recipe, monkeypatch, option
):
    # Two analyses into one folder both ran: the second said "holds an earlier analysis" (or, with --resume or
    # --overwrite, went on), and their partial tables and final files replaced each other's.
    out = tmp_path / "sens"
    seen = []

    class SecondRunDuringProbe(StopAfter):
        def __call__(self, *args, **kwargs):
            self.calls += 1
            if self.calls == 4:  # dense + 2 probes saved: the first run is writing the folder
                before = sorted(p.name for p in out.iterdir())
                seen.append((run("sensitivity", mlp_checkpoint, auto_recipe, *MLP, "-o", out, *option), before))
                assert sorted(p.name for p in out.iterdir()) == before  # the second run wrote nothing
            return self.real(*args, **kwargs)

    SecondRunDuringProbe(monkeypatch, None)
    first = run("sensitivity", mlp_checkpoint, auto_recipe, *MLP, "-o", out, "--no-progress")
    assert first.exit_code == 0, first.stderr
    ((second, before),) = seen
    assert_bad_input(second, str(out), "another sparsekit sensitivity run is writing this folder")
    assert "sensitivity.partial.json" in before
    assert sens.SensitivityTable.load(out / "sensitivity.json").complete()
    # The lock goes with the run: the next analysis into the folder is not refused for it.
    again = run("sensitivity", mlp_checkpoint, auto_recipe, *MLP, "-o", out, "--overwrite", "--no-progress")
    assert again.exit_code == 0, again.stderr
