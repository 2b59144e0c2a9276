from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

import sparsekit.onnx.bench as bench_mod
from sparsekit.errors import ExportError
from sparsekit.onnx import benchmark, export_onnx, latency_table
from sparsekit.onnx.bench import _significant
from sparsekit.onnx.graph import activation_bytes
from sparsekit.onnx.sessions import open_session
from sparsekit.report import latency_verdict


def _export(model: nn.Module, path, features: int = 784) -> str:
    # torchscript: ~100x faster to export than dynamo, and the file format is the same for bench.
    export_onnx(model, path, [1, features], exporter="torchscript", check_parity=False)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    relu = nn.ReLU
    big = nn.Sequential(nn.Linear(784, 1000), relu(), nn.Linear(1000, 1000), relu(), nn.Linear(1000, 10))
    return {
        "tiny": _export(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2)), d / "tiny.onnx", 16),
        "big": _export(big, d / "big.onnx"),
        "small": _export(nn.Sequential(nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 10)), d / "small.onnx"),
    }


def test_result_shape_and_percentiles(files, capsys):
    result = benchmark(files["tiny"], batch_sizes=(1, 8), runs=20, warmup=2, progress=True)

    assert capsys.readouterr().out == ""  # the progress bar goes to stderr
    json.dumps(result, allow_nan=False)  # the report embeds it as-is
    assert {"threads", "provider", "warmup", "runs", "files", "control"} <= result.keys()
    assert result["runs"] == 20 and result["threads"] == 1
    (f,) = result["files"]
    assert f["path"] == files["tiny"] and f["bytes"] > 0 and f["gzip_bytes"] > 0
    assert f["input_shape"] == ["batch", 16]
    for b in ("1", "8"):
        lat = f["latency_ms"][b]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] and lat["mean"] > 0
        assert f["throughput_per_s"][b] == pytest.approx(int(b) / lat["p50"] * 1e3, rel=1e-3)
        assert f["ratio_to_first"][b] == {"p50": 1.0, "spread": [1.0, 1.0]}
        assert f["speedup_significant"][b] is False
        control = result["control"][b]
        assert control["noise"] == pytest.approx(abs(control["ratio_p50"] - 1))


def test_file_against_itself_is_near_one(files):
    result = benchmark([files["tiny"], files["tiny"]], batch_sizes=[4], runs=30, warmup=3)
    ratio = result["files"][1]["ratio_to_first"]["4"]
    lo, hi = ratio["spread"]
    assert 0.5 < lo <= ratio["p50"] <= hi < 2.0
    assert 0.5 < result["control"]["4"]["ratio_p50"] < 2.0


def test_smaller_model_is_faster(files):
    result = benchmark([files["big"], files["small"]], batch_sizes=[32], runs=15, warmup=3)
    small = result["files"][1]
    assert small["ratio_to_first"]["32"]["p50"] < 0.5  # ~40x fewer MACs
    assert small["ratio_to_first"]["32"]["spread"][1] < 1.0
    assert result["notes"] == []  # the same input: before and after pruning, say
    assert small["speedup_significant"]["32"] is True
    table = latency_table(result)
    assert "| big.onnx | 32 |" in table and "| small.onnx | 32 |" in table and "A/A control" in table
    # "significant: yes" says against what: the noise band, as report.md writes it (it printed no band)
    band = small["noise_band"]["32"]
    assert f"| yes (noise band {1 / (1 + band):.3f}x-{1 + band:.3f}x) |" in table and band >= 0.05


def test_files_that_take_different_inputs_are_compared_with_a_note(files):
    # A 16-feature model against a 784-feature one gave "0.06x ... significant: yes" without a word.
    result = benchmark([files["big"], files["tiny"]], batch_sizes=[1], runs=5, warmup=1)
    (note,) = result["notes"]
    assert "different inputs" in note and "['batch', 784]" in note and "['batch', 16]" in note
    assert f"Note: {note}" in latency_table(result)


def test_files_that_give_different_outputs_are_compared_with_a_note(tmp_path):
    # The same input, other classes: a 100-class model against a 10-class one is no before/after pair either.
    ten = _export(nn.Sequential(nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 10)), tmp_path / "ten.onnx")
    hundred = _export(nn.Sequential(nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 100)), tmp_path / "hundred.onnx")
    result = benchmark([ten, hundred], batch_sizes=[1], runs=5, warmup=1)
    (note,) = result["notes"]
    assert "different outputs" in note and "ten.onnx ['batch', 10]" in note and "hundred.onnx ['batch', 100]" in note
    assert benchmark([ten, ten], batch_sizes=[1], runs=5, warmup=1)["notes"] == []


@pytest.mark.parametrize(
    ("ratio", "spread", "aa", "significant"),
    [
        (0.97, [0.969, 0.971], 1.0, False),  # steady and a perfect A/A, but inside the 5% session floor
        (0.94, [0.939, 0.941], 1.0, True),
        (1.06, [1.059, 1.061], 1.0, True),
        (0.90, [0.899, 0.901], 0.85, False),  # the A/A control is off by more
        (0.90, [0.80, 1.02], 1.0, False),  # its own blocks spread wider
    ],
)
def test_a_change_must_clear_the_session_floor_the_aa_control_and_the_spread(ratio, spread, aa, significant):
    control = {"ratio_p50": aa, "spread": [aa, aa]}
    assert _significant({"p50": ratio, "spread": spread}, control) is significant


@pytest.mark.parametrize(
    ("ratio", "significant"),
    [(0.95, False), (0.9503, False), (1.05, False), (1 / 1.05, False), (0.949, True), (1.0535, True)],
)
def test_no_ratio_within_5_percent_of_1_is_a_change(ratio, significant):
    # README: a latency ratio within 5% of 1 is never called faster or slower, on either side; the band
    # the report reads (noise_band, rounded) says the same as the benchmark's own verdict.
    steady, perfect = {"p50": ratio, "spread": [ratio, ratio]}, {"ratio_p50": 1.0, "spread": [1.0, 1.0]}
    assert _significant(steady, perfect) is significant
    verdict = latency_verdict(ratio, bench_mod._noise(steady, perfect))
    assert verdict == ("within noise" if not significant else "faster" if ratio < 1 else "slower")


@pytest.mark.parametrize("sizes", [(0,), (1, -4), (), (1.5,)])
def test_bad_batch_size(files, sizes):
    with pytest.raises(ExportError, match="batch sizes"):
        benchmark(files["tiny"], batch_sizes=sizes, runs=1, warmup=0)


def test_missing_and_non_onnx_files(files, tmp_path):
    with pytest.raises(ExportError, match="nope.onnx"):
        benchmark([files["tiny"], tmp_path / "nope.onnx"], runs=1, warmup=0)
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    with pytest.raises(ExportError, match="notes.onnx"):
        benchmark(text, runs=1, warmup=0)


def test_unknown_provider_lists_available(files):
    with pytest.raises(ExportError, match="CPUExecutionProvider") as err:
        benchmark(files["tiny"], provider="NoSuchExecutionProvider", runs=1, warmup=0)
    assert "NoSuchExecutionProvider" in str(err.value)


def _relu_model(path, shape) -> str:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return str(path)


def test_symbolic_dims_need_input_shape(tmp_path):
    path = _relu_model(tmp_path / "sym.onnx", ["batch", "width"])
    with pytest.raises(ExportError, match=r"a size for width: e.g. input_shape=\[1, 32\]"):
        benchmark(path, batch_sizes=[2], runs=1, warmup=0)
    for shape in ([1, 7], [7]):  # with or without the batch dim
        result = benchmark(path, batch_sizes=[2], runs=2, warmup=0, input_shape=shape)
        assert result["files"][0]["input_shape"] == ["batch", 7]
    with pytest.raises(ExportError, match="does not fit"):
        benchmark(path, batch_sizes=[2], runs=1, warmup=0, input_shape=[1, 7, 7, 7])


def test_a_shape_the_symbolic_dims_accept_but_the_layers_do_not_is_bad_input_not_a_crash(tmp_path):
    """Input ['batch', 'features'] in front of a MatMul with 4 rows: a feature size of 5 passes the
    declared shape, and is reported (ExportError: exit 2) before anything is timed."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "features"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], [0.1] * 12)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    path = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    assert benchmark(str(path), batch_sizes=[1], runs=1, warmup=0, input_shape=[1, 4])["files"][0]
    with pytest.raises(ExportError, match=r"mm\.onnx: onnxruntime cannot run it on inputs of shape \[2, 5\]"):
        benchmark(str(path), batch_sizes=[2], runs=1, warmup=0, input_shape=[1, 5])


def test_fixed_batch_dim_is_refused(tmp_path):
    path = _relu_model(tmp_path / "fixed.onnx", [1, 7])
    assert benchmark(path, batch_sizes=[1], runs=2, warmup=0)["files"][0]["latency_ms"]["1"]["p50"] > 0
    with pytest.raises(ExportError, match="fixed at 1"):
        benchmark(path, batch_sizes=[1, 32], runs=1, warmup=0)


def test_significance_band():
    quiet = {"ratio_p50": 1.01, "spread": [0.99, 1.02]}
    assert _significant({"p50": 0.5, "spread": [0.48, 0.52]}, quiet)
    assert not _significant({"p50": 0.985, "spread": [0.98, 0.99]}, quiet)  # inside the A/A band
    assert not _significant({"p50": 0.9, "spread": [0.6, 1.2]}, quiet)  # its own spread is too wide
    # A noisy control (off by 2x) must not hide a 50x speedup, as it would on a linear scale.
    assert _significant({"p50": 0.02, "spread": [0.019, 0.021]}, {"ratio_p50": 2.0, "spread": [1.5, 2.5]})


def test_threads_option_and_single_batch_size(files):
    result = benchmark(files["tiny"], batch_sizes=4, threads=2, runs=3, warmup=1)
    assert result["threads"] == 2 and list(result["files"][0]["latency_ms"]) == ["4"]


def test_runs_are_interleaved_with_a_separate_control_session(files, monkeypatch):
    log = []

    class FakeSession:
        def __init__(self, path, *, provider, threads, spinning):
            self.path = path

        def get_inputs(self):
            return [SimpleNamespace(name="input", type="tensor(float)", shape=["batch", 16])]

        def get_outputs(self):
            return [SimpleNamespace(name="output", type="tensor(float)", shape=["batch", 2])]

        def run(self, outputs, feed, options=None):
            log.append(self)

    monkeypatch.setattr(bench_mod, "open_session", FakeSession)
    benchmark([files["tiny"], files["small"]], batch_sizes=[1], runs=3, warmup=0, input_shape=[1, 16])

    a, b, control = log[:3]  # one untimed run each first (a shape check)
    assert control is not a and control.path == a.path and b.path.name == "small.onnx"
    # Every run times each session once, and who goes first rotates.
    assert log[3:] == [a, b, control, b, control, a, control, a, b]


def test_session_options(files):
    opts = open_session(files["tiny"], threads=1).get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_batch_that_cannot_fit_in_memory_is_refused_before_running(files, monkeypatch):
    """Inputs and activations of every session add up; a batch far beyond memory is an error, not an
    out-of-memory kill halfway through."""
    from pathlib import Path

    monkeypatch.setattr(bench_mod, "available_memory", lambda: 1 << 30)  # a 1 GiB machine
    pair = [files["big"], files["small"]]
    per_sample = activation_bytes(Path(files["big"]), [784])
    # input, two 1000-wide hidden layers (+ their ReLUs), logits: all grow with the batch
    assert per_sample is not None and per_sample >= 4 * (784 + 2 * 1000 + 10)
    with pytest.raises(ExportError, match="GiB available"):
        benchmark(pair, [(1 << 30) // per_sample], runs=1, warmup=0)
    assert benchmark(pair, [64], runs=1, warmup=0)["files"]  # a batch that fits still runs


def test_unsized_graphs_are_still_bounded(files, monkeypatch):
    """When shape inference cannot size the graph, the check assumes activations of up to 16x the
    input rather than skipping it (a kill by the kernel gives the user nothing)."""
    monkeypatch.setattr(bench_mod, "available_memory", lambda: 1 << 30)
    monkeypatch.setattr(bench_mod, "activation_bytes", lambda path, dims: None)
    with pytest.raises(ExportError, match="GiB available"):
        benchmark([files["small"]], [1 << 20], runs=1, warmup=0)


class _CountedSession:
    """An onnxruntime session that counts its runs (everything else passed through)."""

    def __init__(self, session, counts: list[int]) -> None:
        self._session, self._counts = session, counts

    def run(self, *args, **kwargs):
        self._counts.append(1)
        return self._session.run(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._session, name)


@pytest.fixture
def fake_clock(monkeypatch):
    """bench's clock advanced 5 ms by every reading: a run "takes" 5 ms, whatever the machine does."""
    now = [0]

    def tick() -> int:
        now[0] += 5_000_000
        return now[0]

    monkeypatch.setattr(bench_mod, "_now", tick)
    return now


def test_the_budget_stops_the_timed_runs_after_at_least_min_runs(files, fake_clock):
    # Two sessions (the file and its A/A control), each round ~10 ms of runs each: a 0.2 s budget per
    # session is ~20 rounds, far below the 1000 asked.
    r = benchmark(files["tiny"], batch_sizes=(1, 8), runs=1000, warmup=0, budget_s=0.2, min_runs=5)
    assert r["budget_s"] == 0.2 and r["min_runs"] == 5 and r["runs"] == 1000
    for b in ("1", "8"):
        assert 5 <= r["runs_done"][b] < 60
    # A budget already spent after the first round still leaves min_runs runs of each session.
    r = benchmark(files["tiny"], batch_sizes=(1,), runs=1000, warmup=0, budget_s=1e-9, min_runs=7)
    assert r["runs_done"] == {"1": 7}
    assert r["files"][0]["latency_ms"]["1"]["p50"] == pytest.approx(5.0)  # the fake clock's 5 ms per run
    # min_runs above runs: runs wins; no budget: exactly runs.
    assert benchmark(files["tiny"], batch_sizes=(1,), runs=3, warmup=0, budget_s=1e-9)["runs_done"] == {"1": 3}
    assert benchmark(files["tiny"], batch_sizes=(1,), runs=40, warmup=0, budget_s=None)["runs_done"] == {"1": 40}


def test_the_budget_bounds_the_warmup_too(files, fake_clock, monkeypatch):
    counts: list[int] = []
    real = bench_mod.open_session
    monkeypatch.setattr(bench_mod, "open_session", lambda *a, **k: _CountedSession(real(*a, **k), counts))
    r = benchmark(files["tiny"], batch_sizes=(1,), runs=500, warmup=500, budget_s=1e-9, min_runs=4)
    # Per session: the untimed first run, one warm-up round, then min_runs timed runs.
    assert r["runs_done"] == {"1": 4} and len(counts) == 2 * (1 + 1 + 4)


def test_the_warmup_takes_its_share_of_the_budget(files, fake_clock, monkeypatch):
    counts: list[int] = []
    real = bench_mod.open_session
    monkeypatch.setattr(bench_mod, "open_session", lambda *a, **k: _CountedSession(real(*a, **k), counts))
    benchmark(files["tiny"], batch_sizes=(1,), runs=4, warmup=1000, budget_s=0.2, min_runs=4)
    # 2 sessions x 0.2 s x 1/4 = 0.1 s of warm-up rounds, each one 5 ms clock reading: 20 rounds (80 at the
    # whole budget), besides each session's untimed first run and its 4 timed runs.
    assert len(counts) // 2 - 1 - 4 == 20 * bench_mod.WARMUP_SHARE / 0.25


class _JitteredSession(_CountedSession):
    """A session whose every run also moves the fake clock on by a random 0-5 ms: its timings are noisy."""

    def __init__(self, session, counts: list[int], clock: list[int], rng) -> None:
        super().__init__(session, counts)
        self._clock, self._rng = clock, rng

    def run(self, *args, **kwargs):
        self._clock[0] += int(self._rng.integers(0, 5_000_000))
        return super().run(*args, **kwargs)


def test_steady_ratios_stop_the_timing_before_the_budget(files, fake_clock):
    # Every run "takes" 5 ms: the ratios are exactly 1 from the first block on, so timing stops at the first
    # whole block after a tenth of the budget, not at the budget (~16 rounds here).
    r = benchmark(files["tiny"], batch_sizes=(1,), runs=1000, warmup=0, budget_s=0.2, min_runs=5)
    assert r["runs_done"] == {"1": 5} and r["precision"] == bench_mod.PRECISION
    # Switched off, or without a budget, only the budget (or runs) stops it.
    for off in (None, 0):
        r = benchmark(files["tiny"], batch_sizes=(1,), runs=1000, warmup=0, budget_s=0.2, min_runs=5, precision=off)
        assert r["runs_done"]["1"] > 10 and r["precision"] is None
    assert benchmark(files["tiny"], batch_sizes=(1,), runs=40, warmup=0, budget_s=None)["runs_done"] == {"1": 40}


def test_noisy_ratios_run_to_the_budget(files, fake_clock, monkeypatch):
    rng = np.random.default_rng(0)
    made: list[int] = []
    real = bench_mod.open_session

    def session(*a, **k):
        made.append(1)
        # The A/A control (the second session) is noisy: its ratio's block spread stays wide.
        return _JitteredSession(real(*a, **k), [], fake_clock, rng) if len(made) == 2 else real(*a, **k)

    monkeypatch.setattr(bench_mod, "open_session", session)
    r = benchmark(files["tiny"], batch_sizes=(1,), runs=1000, warmup=0, budget_s=0.2, min_runs=5)
    steady = benchmark(files["tiny"], batch_sizes=(1,), runs=1000, warmup=0, budget_s=0.2, min_runs=5)
    assert r["runs_done"]["1"] > 10 > steady["runs_done"]["1"]


@pytest.mark.parametrize("kw", [{"runs": 10**12}, {"warmup": 10**12}, {"threads": 10**12}, {"threads": -1}])
def test_absurd_counts_are_refused_before_any_work(files, kw):
    with pytest.raises(ExportError, match="need threads"):
        benchmark(files["tiny"], batch_sizes=(1,), **kw)


@pytest.mark.parametrize("option", ["--precision", "--budget"])
def test_cli_refuses_nan_naming_the_option(files, option):
    from click.testing import CliRunner

    from sparsekit.cli import main

    result = CliRunner().invoke(main, ["bench", str(files["tiny"]), option, "nan"])
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output


def test_the_cli_limits_are_the_recipes():
    from sparsekit import recipe
    from sparsekit.cli import BENCH_LIMITS

    budget = recipe.BenchmarkSpec.model_fields["budget_s"].metadata
    assert next(m.le for m in budget if hasattr(m, "le")) == bench_mod.MAX_BUDGET_S
    assert {
        "threads": recipe.MAX_THREADS,
        "runs": recipe.MAX_RUNS,
        "budget_s": next(m.le for m in budget if hasattr(m, "le")),
    } == BENCH_LIMITS


def test_cli_precision_zero_turns_the_early_stop_off(files, fake_clock):
    from click.testing import CliRunner

    from sparsekit.cli import main

    args = ["bench", str(files["tiny"]), "-b", "1", "--runs", "1000", "--warmup", "0", "--budget", "2", "--json"]
    steady = json.loads(CliRunner().invoke(main, args).output)
    off = json.loads(CliRunner().invoke(main, [*args, "--precision", "0"]).output)
    assert steady["precision"] == 0.02 and steady["runs_done"]["1"] < off["runs_done"]["1"]
    assert off["precision"] is None


@pytest.mark.parametrize("precision", [1, -0.1, 2, float("nan")])
def test_bad_precision_is_refused(files, precision):
    with pytest.raises(ExportError, match="precision"):
        benchmark(files["tiny"], batch_sizes=(1,), precision=precision)


@pytest.mark.parametrize(
    "kw",
    [
        {"budget_s": 0},
        {"budget_s": -1.0},
        {"budget_s": float("inf")},
        {"budget_s": float("nan")},
        {"budget_s": 1e300},
        {"min_runs": 0},
    ],
)
def test_bad_budget_is_refused(files, kw):
    with pytest.raises(ExportError, match="budget"):
        benchmark(files["tiny"], batch_sizes=(1,), **kw)


def test_rows_of_files_with_the_same_name_are_told_apart(files, tmp_path):
    # Two runs' model.onnx side by side: each row names as many folders as tell them apart.
    import shutil

    for run in ("run-a", "run-b"):
        (tmp_path / run).mkdir()
        shutil.copy(files["tiny"], tmp_path / run / "model.onnx")
    result = benchmark(
        [files["tiny"], tmp_path / "run-a" / "model.onnx", tmp_path / "run-b" / "model.onnx"],
        batch_sizes=[1], runs=3, warmup=0,
    )  # fmt: skip
    table = latency_table(result)
    name = Path(files["tiny"]).name
    assert f"| {name} | 1 |" in table and "| run-a/model.onnx | 1 |" in table and "| run-b/model.onnx | 1 |" in table


def test_the_text_table_gives_the_runs_done_and_each_files_size(files, fake_clock):
    result = benchmark([files["tiny"], files["small"]], batch_sizes=(1, 8), runs=1000, warmup=0, budget_s=0.2)
    table = latency_table(result)
    done = result["runs_done"]
    assert done["1"] < 1000
    assert f"Timed runs per file: batch 1: {done['1']}, batch 8: {done['8']} (at most 1000)" in table
    for f in result["files"]:
        name = Path(f["path"]).name
        assert f"{name} {f['bytes']:,} B (gzip level {f['gzip_level']}: {f['gzip_bytes']:,} B)" in table


def test_the_progress_bar_writes_nothing_where_stderr_is_no_terminal(capsys):
    """Into a log file or a pipe the bar printed a stray blank line (before an interruption's message too)."""
    from sparsekit.onnx.bench import _progress_bar

    with pytest.raises(KeyboardInterrupt), _progress_bar(True, 10) as advance:
        advance(1)
        raise KeyboardInterrupt
    assert capsys.readouterr().err == ""


def _endless_loop_onnx(path: Path) -> Path:
    """A graph that never ends in practice: a Loop whose trip count is 10**15 (its body an Identity)."""
    from onnx import numpy_helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["v_in"], ["v_out"]), helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None),
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["M", "c", "x"], ["y"], body=body)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[
            numpy_helper.from_array(np.array(10**15, dtype=np.int64), "M"),
            numpy_helper.from_array(np.array(True), "c"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_a_graph_that_never_ends_is_stopped_not_waited_for(tmp_path, monkeypatch):
    # A file is data: a Loop with an absurd trip count held `sparsekit bench` forever, deaf to Ctrl-C and
    # SIGTERM (onnxruntime's run never returns to Python). The first run is now stopped after a limit.
    import threading
    import time

    path = _endless_loop_onnx(tmp_path / "loop.onnx")
    monkeypatch.setattr(bench_mod, "FIRST_RUN_LIMIT_S", 1.0, raising=False)
    result: dict = {}

    def run() -> None:
        try:
            benchmark(path, batch_sizes=[1], runs=3, warmup=1)
        except ExportError as err:
            result["error"] = str(err)

    worker = threading.Thread(target=run, daemon=True)
    start = time.monotonic()
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "bench of an endless graph did not return within 60 s"
    assert time.monotonic() - start < 60
    assert "took longer than 1 s and was stopped" in result.get("error", ""), result


def _range_bomb_onnx(path: Path, count: float) -> Path:
    """y = x + sum(Range(0, count, 1)): a tiny file whose one intermediate tensor holds ``count`` floats. The
    Range's limit is computed from the input (``sum(x) * 0 + count``), so no shape inference sizes it and
    onnxruntime cannot constant-fold it when the session opens: the memory is taken in the first run."""
    from onnx import numpy_helper

    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Mul", ["s", "zero"], ["s0"]),
        helper.make_node("Add", ["s0", "count"], ["limit"]),
        helper.make_node("Range", ["zero", "limit", "one"], ["r"]),
        helper.make_node("ReduceSum", ["r"], ["t"], keepdims=0),
        helper.make_node("Add", ["x", "t"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
            numpy_helper.from_array(np.array(count, dtype=np.float32), "count"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="the cap is Linux's RLIMIT_DATA")
def test_a_tensor_the_graph_sizes_itself_cannot_take_more_than_the_free_memory(tmp_path, monkeypatch):
    # A file is data: Range(0, 3e9, 1) in a 400-byte file made onnxruntime take 12 GB (6e9: the kernel's OOM
    # killer, not an exit 2). Shape inference cannot size it, so bench caps what the runs may allocate at a
    # share of the free memory. Here "free" is 512 MB and the Range wants 800 MB.
    import resource

    path = _range_bomb_onnx(tmp_path / "range.onnx", 2e8)
    monkeypatch.setattr(bench_mod, "available_memory", lambda: 512 << 20)
    before = resource.getrlimit(resource.RLIMIT_DATA)
    with pytest.raises(ExportError, match=r"needs more memory than is available .*0\.4 GiB") as err:
        benchmark(path, batch_sizes=[1], runs=3, warmup=1)
    assert str(path) in str(err.value)
    assert resource.getrlimit(resource.RLIMIT_DATA) == before  # the cap is lifted after the runs
    # The same graph with a small Range runs under the same cap: the cap is not what failed above.
    small = _range_bomb_onnx(tmp_path / "small_range.onnx", 1e3)
    assert benchmark(small, batch_sizes=[1], runs=3, warmup=1)["files"]
