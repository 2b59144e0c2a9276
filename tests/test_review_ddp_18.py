"""Review (torchrun / DDP angle, round 18): what the processes of a torchrun run say when one of them dies."""

from __future__ import annotations

import json
import warnings

import pytest
import torch.distributed  # noqa: F401 - imported, as in a distributed run (the peer check looks for it)

from sparsekit import cli
from sparsekit.errors import Terminated


def _rank0_of_two(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")


def test_torchruns_sigterm_after_a_peer_died_names_the_peer_not_a_guess_of_where_training_was(
    tmp_path, monkeypatch, capsys
):
    # Seen: rank 1 killed in epoch 5; rank 0's backward failed with gloo's "Connection closed by peer", and torchrun's
    # SIGTERM reached it while that error unwound, so it said "Terminated (SIGTERM): after pruning and fine-tuning,
    # before training started ... no epoch was checkpointed: --resume starts the training over", though epoch 4 was.
    _rank0_of_two(monkeypatch)
    out = tmp_path / "out"
    (out / ".sparsekit" / "next" / "checkpoints").mkdir(parents=True)
    (out / ".sparsekit" / "next" / "checkpoints" / "last.pt").write_bytes(b"x")

    def prune(out=None, debug=False, as_json=False):
        try:
            raise RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:47287")
        except RuntimeError:
            raise Terminated("after pruning and fine-tuning, before training started") from None

    with warnings.catch_warnings(), pytest.raises(SystemExit) as stop:
        cli.handle_errors(prune)(out=str(out))
    err = capsys.readouterr().err
    assert stop.value.code == 143
    (line,) = err.splitlines()
    assert line.startswith("Terminated (SIGTERM) after another process of this distributed run stopped"), line
    assert "before training started" not in line and "starts the training over" not in line
    assert "`--resume` continues from it" in line and str(out) in line


def test_a_ctrl_c_that_broke_a_collective_on_its_way_is_still_an_interruption(monkeypatch, capsys):
    # Ctrl-C reaches every rank: the first to stop breaks the others' collectives, which then raise the Ctrl-C while
    # that error unwinds. That is the user's interruption (130), not another process failing.
    _rank0_of_two(monkeypatch)

    def prune(out=None, debug=False, as_json=False):
        try:
            raise RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:47287")
        except RuntimeError:
            raise KeyboardInterrupt("in epoch 2 of 3; no epoch was checkpointed") from None

    with warnings.catch_warnings(), pytest.raises(SystemExit) as stop:
        cli.handle_errors(prune)(out=None)
    assert stop.value.code == 130
    assert capsys.readouterr().err.startswith("Interrupted: in epoch 2 of 3")


def test_a_peer_killed_outright_is_not_said_to_have_printed_a_line(monkeypatch, capsys):
    # A rank killed by SIGKILL (the OOM killer) prints nothing: "its own Error line above says why" sent users
    # looking for a line that is not there.
    _rank0_of_two(monkeypatch)

    def prune(out=None, debug=False, as_json=False):
        raise RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer")

    with warnings.catch_warnings(), pytest.raises(SystemExit) as stop:
        cli.handle_errors(prune)(out=None)
    line = capsys.readouterr().err.strip()
    assert stop.value.code == 2
    assert "torchrun's summary" in line and "signal" in line, line


@pytest.mark.parametrize("command", ["sensitivity", "export", "bench", "report"])
def test_a_one_process_command_under_torchrun_is_refused_on_every_rank_before_it_works(tmp_path, command):
    # Seen: `torchrun --nproc-per-node=2 -m sparsekit sensitivity ...` probed every layer on both ranks; rank 0 wrote
    # the folder and rank 1 failed with "another sparsekit sensitivity run is writing this folder". bench timed the
    # files while the other rank competed for the cores, and reported those latencies.
    from click.testing import CliRunner

    args = {
        "sensitivity": ["sensitivity", "m.pt", "lenet-gradual-magnitude-90", "-o", str(tmp_path / "sens")],
        "export": ["export", "m.pt", "-o", str(tmp_path / "m.onnx")],
        "bench": ["bench", "a.onnx"],
        "report": ["report", str(tmp_path)],
    }[command]
    for rank in ("0", "1"):
        done = CliRunner().invoke(cli.main, args, env={"WORLD_SIZE": "2", "RANK": rank})
        assert done.exit_code == 2, done.output
        (line,) = done.output.strip().splitlines()
        assert line.startswith("Error: " + ("rank 1: " if rank == "1" else "") + f"sparsekit {command} runs in one")
        assert "without torchrun" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_ctrl_c_under_torchrun_says_which_rank_each_line_is_from(monkeypatch, capsys):
    # Seen: Ctrl-C on `torchrun ... prune` printed two identical "Interrupted: in epoch 5 of 40; ..." lines, rank 1's
    # unlabelled, while its Error lines and the start-up's "rank 1: Interrupted." say which rank they are.
    monkeypatch.setenv("WORLD_SIZE", "2")

    def prune(out=None, debug=False, as_json=False):
        raise KeyboardInterrupt("in epoch 5 of 40; no epoch was checkpointed")

    lines = {}
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        with warnings.catch_warnings(), pytest.raises(SystemExit) as stop:
            cli.handle_errors(prune)(out=None)
        assert stop.value.code == 130
        (lines[rank],) = capsys.readouterr().err.splitlines()
    assert lines["0"].startswith("Interrupted: in epoch 5 of 40")
    assert lines["1"] == "rank 1: " + lines["0"]


def test_a_resume_on_another_step_clock_is_refused_before_the_dense_model_is_measured(tmp_path, monkeypatch):
    # Seen: a 2-process run resumed under 3 processes (torchrun) measured and exported the dense model first, then
    # was refused naming OUT/.sparsekit/next/checkpoints/last.pt, a staging copy gone once the run stopped.
    import torch
    from conftest import InterruptOnEvaluate, assert_bad_input, fast_prune

    import sparsekit
    import sparsekit.pipeline as pipeline_mod
    from examples.models import mlp

    model = tmp_path / "mlp.pt"
    sparsekit.save_model(mlp(64, [32, 16]), model, factory="examples.models:mlp", kwargs={"hidden": [32, 16]})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "data: {source: digits, batch_size: 64}\nfinetune: {epochs: 2}\n"
        "pruning: [{method: magnitude, sparsity: 0.5, schedule: oneshot}]\n"
    )
    out = tmp_path / "out"
    stop = InterruptOnEvaluate(monkeypatch, 3)  # Ctrl-C at the end of epoch 2: epoch 1 is checkpointed
    first = fast_prune(model, recipe, out, "--arch", "examples.models:mlp")
    assert first.exit_code == 130, first.output
    stop.restore()
    (ckpt,) = out.rglob("last.pt")
    state = torch.load(ckpt, weights_only=True)
    state["steps_per_epoch"], state["processes"] = state["steps_per_epoch"] * 2, 2  # as written by 2 processes
    torch.save(state, ckpt)
    measured = []
    monkeypatch.setattr(pipeline_mod, "evaluate", lambda *a, **k: measured.append(1) or {"accuracy": 0, "loss": 0})
    again = fast_prune(model, recipe, out, "--resume", "--arch", "examples.models:mlp")
    line = assert_bad_input(again, "(2 process(es))", "same number")
    assert line.startswith(f"Error: {ckpt}: cannot resume from it") and ckpt.is_file()
    assert measured == []


def test_strict_fails_every_rank_when_rank_0s_report_missed_a_target(tmp_path, monkeypatch):
    # Seen: `torchrun ... prune --strict` with a missed target: rank 0 exited 2, rank 1 exited 0 with no line.
    from click.testing import CliRunner

    import sparsekit.pipeline as pipeline_mod

    out = tmp_path / "out"
    out.mkdir()
    missed = "target missed: entry 0 (structured) asked ratio 0.300, achieved 0.500 (more than asked)"
    (out / "report.json").write_text(json.dumps({"summary": {"warnings": [missed]}}))
    monkeypatch.setattr(pipeline_mod, "run_prune", lambda *a, **k: None)  # what a rank other than 0 gets
    (tmp_path / "m.pt").write_bytes(b"never read: run_prune is replaced")
    args = ["prune", str(tmp_path / "m.pt"), "lenet-gradual-magnitude-90", "-o", str(out)]
    env = {"WORLD_SIZE": "2", "RANK": "1"}
    assert CliRunner().invoke(cli.main, args, env=env).exit_code == 0  # without --strict a miss is a warning
    done = CliRunner().invoke(cli.main, [*args, "--strict"], env=env)
    assert done.exit_code == 2, done.output
    assert done.output.strip() == f"Error: rank 1: {missed}; the outputs are in {out}"


def test_a_ctrl_c_while_another_rank_waits_for_rank_0_says_training_had_finished(tmp_path, monkeypatch):
    # Seen: Ctrl-C while rank 0 benchmarked: rank 0 said "--resume skips the finished training", rank 1 (waiting for
    # it) said "--resume continues from the last finished epoch": nothing told it where the run was.
    import sparsekit
    import sparsekit.pipeline as pipeline_mod
    from examples.models import mlp
    from sparsekit.errors import TRAINING_DONE

    model = tmp_path / "mlp.pt"
    sparsekit.save_model(mlp(64, [32, 16]), model, factory="examples.models:mlp", kwargs={"hidden": [32, 16]})
    monkeypatch.setattr(pipeline_mod._distributed, "is_main", lambda: False)  # this process is rank 1
    monkeypatch.setattr(pipeline_mod, "_run_other_rank", lambda *a, **k: None)  # trained with rank 0

    def ctrl_c() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline_mod._distributed, "barrier", ctrl_c)  # Ctrl-C while rank 0 benchmarks
    recipe = {
        "data": {"source": "digits"},
        "finetune": {"epochs": 2},
        "pruning": [{"method": "magnitude", "sparsity": 0.5}],
    }
    with pytest.raises(KeyboardInterrupt) as info:
        sparsekit.run_prune(model, recipe, tmp_path / "out", arch="examples.models:mlp")
    said = str(info.value)
    assert said.startswith("while waiting for rank 0") and TRAINING_DONE in said, said
    assert cli._interrupt_message("prune", False, said, None).endswith(  # (None: as if rank 0 had written)
        "`--resume` skips the finished training and redoes only what follows it."
    )
