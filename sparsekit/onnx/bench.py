"""onnxruntime latency benchmark: files timed interleaved, with an A/A control to show the noise.

Sessions come from :func:`sparsekit.onnx.sessions.open_session`, inputs from
:func:`~sparsekit.onnx.sessions.random_array`; sizes, weight counts and MACs of each file from
:mod:`sparsekit.onnx.stats` and :mod:`sparsekit.onnx.graph` (computed once per file).

Example::

    result = benchmark(["dense.onnx", "pruned.onnx"], batch_sizes=[1, 32])
    print(latency_table(result))
    result["files"][1]["ratio_to_first"]["1"]["p50"]   # < 1: pruned is faster at batch 1
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from sparsekit.errors import ExportError, one_line, option
from sparsekit.fsutil import available_memory, global_rng_kept, private_memory
from sparsekit.onnx.files import gzip_level, onnx_bytes
from sparsekit.onnx.graph import activation_bytes, onnx_macs
from sparsekit.onnx.sessions import DEFAULT_PROVIDER, ORT_DTYPES, open_session, random_array
from sparsekit.onnx.stats import size_report
from sparsekit.recipe import MAX_BATCH, MAX_RUNS, MAX_THREADS
from sparsekit.report import ms_text
from sparsekit.wrappers import is_torch_module, require_path

__all__ = ["benchmark", "latency_table"]

# Ratio spread comes from this many consecutive blocks of runs, each with its own p50 ratio.
N_BLOCKS = 5
# The time budget of a benchmark: the timed runs of one batch size stop once they have taken this many
# seconds per session (each file, and the A/A control), after at least MIN_RUNS runs of each; the warm-up
# stops at WARMUP_SHARE of it (after one run). A tiny model does all `runs` in a fraction of it; a 135 MB
# MLP at batch 32 (~30 ms a run) stopped after ~65 runs instead of 200 under the budget alone, after 25 once
# PRECISION also stopped it (benchmarks/memory_scaling.py).
BUDGET_S = 2.0
# The largest budget accepted (the recipe's benchmark.budget_s limit): an hour per session and batch size.
MAX_BUDGET_S = 3600.0
# The warm-up's share of the budget: it only has to fault in memory and settle the caches, which a few runs
# do; at the whole budget it cost as much as the timing (a 135 MB model: ~6 s of its 18 s benchmark), at a
# quarter still ~1.8 s of a benchmark whose timing takes ~2.3 s.
WARMUP_SHARE = 0.1
# Fewest timed runs per session and batch size under a budget: 5 per block of the ratio spread.
MIN_RUNS = 5 * N_BLOCKS
# Under a budget the timed runs also stop once every ratio to the first file (the A/A control's included)
# is known to within this fraction: half the spread of its per-block p50 ratios (log scale), about 2.6
# standard errors of the overall p50 ratio with 5 blocks. Runs whose ratios are that steady need no more:
# a 135 MB MLP's ratios are within 1% after 25 rounds and moved by < 0.5% over the next 95
# (benchmarks/memory_scaling.py). Checked on whole blocks only, and only once the runs took
# PRECISION_MIN_SHARE of the budget: cheap runs cost nothing to keep doing, so they still run to `runs`.
PRECISION = 0.02
PRECISION_MIN_SHARE = 0.1
# The narrowest noise band: a ratio within 5% of 1 (0.95 to 1.05) is never called a change. The band is
# log-symmetric, so its floor is ln(1 / 0.95) either way (0.95 to 1.0526; ln(1.05) would call 0.951 faster).
# Two onnxruntime sessions of one file run at different speeds in their own right (where their buffers
# land), a difference the runs of one session cannot show and a single A/A pair measures only once: a 135 MB
# MLP against a byte copy of itself read 0.967-1.028 over 6 benchmarks (its A/A control 0.948-1.010; one new
# user's worst, 1.077), LeNet against itself 0.95-1.06 at batch 1 (benchmarks/bench_stability.py), and 2 of
# those 6 copies were called significantly different under the measured band alone.
SESSION_FLOOR = 0.05
_LOG_FLOOR = -math.log(1 - SESSION_FLOOR)  # the wider side, 1 / 0.95, so both 0.95 and 1.05 lie inside

PathLike = str | os.PathLike[str]


def benchmark(
    paths: PathLike | Iterable[PathLike],
    batch_sizes: Sequence[int] = (1, 32),
    *,
    threads: int = 1,
    warmup: int = 20,
    runs: int = 200,
    provider: str = DEFAULT_PROVIDER,
    input_shape: Sequence[int] | None = None,
    progress: bool = False,
    seed: int = 0,
    budget_s: float | None = BUDGET_S,
    min_runs: int = MIN_RUNS,
    precision: float | None = PRECISION,
) -> dict[str, Any]:
    """Time each ONNX file at each batch size on ``provider`` with ``threads`` intra-op threads
    (0: onnxruntime's default); ratios are relative to the first file.

    Runs are interleaved across files (rotating which goes first) so drift in machine speed hits
    all alike, and a second session of the first file is timed alongside as an A/A control:
    its ratio to the first shows how large a difference noise alone produces. Each file takes one
    float32 (or float16 / float64) input, fed with seeded standard-normal data (the same for files of the same
    shape), or one int64 /
    int32 input of token ids (a model exported from an ``nn.Embedding`` first), fed with id 0, which every
    vocabulary has;
    ``input_shape`` (batch dim included or not) is only needed for symbolic non-batch dims.

    Cost: ``runs`` is the most timed runs per file and batch size. ``budget_s`` (default
    :data:`BUDGET_S`, 2 s) bounds the time: at each batch size the timed runs stop once they have taken
    ``budget_s`` seconds per session (the files and the A/A control), but not before each session ran
    ``min_runs`` times (default :data:`MIN_RUNS`, 25; ``runs`` if fewer); they also stop once every p50 ratio
    to the first file (the A/A control's too) is known to within ``precision`` (default :data:`PRECISION`,
    0.02: half the spread of its per-block ratios, on a log scale), checked after whole blocks of runs once
    they took a tenth of the budget (:data:`PRECISION_MIN_SHARE`; ``precision=None`` or 0: only the budget
    stops them). It bounds the spread between blocks, not the error: optional stopping calls a difference
    between identical files significant a little more often (0.8% of simulated runs at 2-5% noise before
    the :data:`SESSION_FLOOR`, 0% with it: the simulation in ``benchmarks/bench_stability.py``).
    Keep ``min_runs`` at 25 or more: below it the blocks are a run or two each. The warm-up stops after a
    tenth of the budget (:data:`WARMUP_SHARE`), after one run. ``budget_s=None``: exactly ``warmup`` and
    ``runs`` runs. Sizes and MACs are read once the sessions are closed, so their memory never adds to the
    sessions'.

    Returns ``{"notes", "threads", "provider", "warmup", "runs", "runs_done", "budget_s", "min_runs", "precision",
    "seed", "batch_sizes", "onnxruntime", "files", "control"}`` (``runs_done``: timed runs
    per session at each batch size, ``{"1": n, ...}``); each file has :func:`~sparsekit.onnx.stats.size_report` (bytes),
    ``macs``/``effective_macs``, ``latency_ms`` (p50/p90/p99/mean per batch size, in ms),
    ``throughput_per_s`` (samples/s), ``ratio_to_first`` (p50 ratio and its spread over blocks of
    runs), ``speedup_significant`` and ``noise_band``; ``control`` is the A/A ratio per batch size; ``notes``
    says when the files take different inputs or give different outputs (their ratios then compare
    different models).
    Ctrl-C (KeyboardInterrupt, or SIGTERM's :class:`~sparsekit.errors.Terminated`) once at least one batch size
    was timed is raised again after those are summarised, carrying their result as its ``partial`` attribute
    (``"interrupted": True`` and a note naming the batch sizes not timed).
    Raises :class:`ExportError` for bad options, an unavailable provider, a batch too big for the
    memory, and a file that is not ONNX, keeps external data outside its folder (checked before
    onnxruntime opens it) or does not load in onnxruntime.
    """
    export_first = "export it first, sparsekit.export_onnx(model, 'model.onnx', input_shape), and benchmark that file"
    # Any iterable of paths, read once: a generator (Path.glob) or a set was taken before the paths were checked;
    # a model in memory is refused as one even where it iterates (nn.Sequential yields its layers).
    if isinstance(paths, str | os.PathLike) or not isinstance(paths, Iterable) or is_torch_module(paths):
        listed: list[Any] = [paths]
    else:
        listed = list(paths)
    for p in listed:
        require_path(p, "benchmark(paths=...)", export_first)
    files = [Path(p) for p in listed]
    if not files:
        raise ExportError("benchmark needs at least one ONNX file")
    sizes = _check_batch_sizes(batch_sizes)
    threads, warmup, runs, min_runs, seed = _check_option_types(
        threads, warmup, runs, min_runs, seed, budget_s, precision
    )
    if seed < 0:
        raise ExportError(f"benchmark(seed=...): must be >= 0 (it seeds the input data), got {seed}")
    if not (0 <= threads <= MAX_THREADS and 0 <= warmup <= MAX_RUNS and 1 <= runs <= MAX_RUNS):
        raise ExportError(
            f"need threads 0..{MAX_THREADS}, warmup 0..{MAX_RUNS:,} and runs 1..{MAX_RUNS:,} "
            f"(got {threads}, {warmup}, {runs})"
        )
    if (budget_s is not None and not 0 < budget_s <= MAX_BUDGET_S) or min_runs < 1:
        raise ExportError(
            f"need a time budget of 0 < seconds <= {MAX_BUDGET_S:g} (or none) and min_runs >= 1 "
            f"(got {budget_s}, {min_runs})"
        )
    if precision is not None and not 0 <= precision < 1:
        raise ExportError(f"need a precision from 0 (off) to below 1, or none, got {precision}")
    precision = precision or None
    # Nanoseconds of runs per session before a batch size's warm-up or timing stops (None: no limit).
    budget_ns = None if budget_s is None else int(budget_s * 1e9)

    # Interleaved sessions each own a thread pool; an idle pool that spins would steal cores from the
    # session being timed, so only a single-threaded session may spin.
    def session(path: Path) -> ort.InferenceSession:
        return open_session(path, provider=provider, threads=threads, spinning=threads == 1)

    sessions, dims, per_sample = [], [], []
    available = available_memory()
    # Sizing a file's activations parses all of it (~2x its bytes for a moment): on top of every session open
    # (the A/A control's too) that was the benchmark's peak. So each file is sized before its own session opens,
    # for the dims it will most likely be fed (the shape given, else the previous file's); the session's own
    # check of the file then reads that parse's memo instead of parsing it again.
    guess = _dims_given(input_shape)
    for path in files:
        need = _activation_need(path, guess) if available is not None and guess is not None else None
        sessions.append(session(path))
        dims.append(_input_dims(sessions[-1], path, input_shape, sizes))
        if available is not None:
            per_sample.append(need if need is not None and dims[-1] == guess else _activation_need(path, dims[-1]))
        guess = dims[-1]
    # What each file gives (past the batch dim): a pruned model gives what its dense model gives.
    outputs = [[list(o.shape[1:]) for o in s.get_outputs()] for s in sessions]
    if available is not None:
        _check_memory(files, dims, sizes, per_sample, available)
    sessions.append(session(files[0]))  # the A/A control
    dims.append(dims[0])

    samples = {}  # batch size -> int64 ns array of shape (len(sessions), runs)
    total = len(sizes) * (warmup + runs)
    stopped: KeyboardInterrupt | None = None
    feeds: list[dict] = []
    with _progress_bar(progress, total) as advance, _memory_cap() as cap:
        try:
            for b in sizes:
                # Seeded per file, so files with the same input shape see exactly the same data.
                feeds = [
                    {s.get_inputs()[0].name: random_array([b, *d], _FED[s.get_inputs()[0].type], seed=seed)}
                    for s, d in zip(sessions, dims, strict=True)
                ]
                for path, s, feed, d in zip([*files, files[0]], sessions, feeds, dims, strict=True):
                    _first_run(s, feed, path, [b, *d], cap)
                _warm_up(sessions, feeds, warmup, None if budget_ns is None else int(budget_ns * WARMUP_SHARE), advance)
                samples[b] = _timed_runs(
                    sessions, feeds, runs, advance, budget_ns, min(min_runs, runs),
                    None if budget_ns is None else precision,
                )  # fmt: skip
        except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (errors.Terminated)
            if not samples:
                raise
            stopped = err  # the batch sizes timed are summarised below and go with it (nothing measured is lost)
    del sessions, feeds  # onnxruntime's copies of the weights go before the files are read for their stats

    out = _summarise(files, dims, samples, threads, provider, warmup, runs, seed)
    if not out["notes"] and any(o != outputs[0] for o in outputs):
        labels = _labels(files)
        gives = "; ".join(f"{labels[i]} {_shapes(o)}" for i, o in enumerate(outputs))
        out["notes"].append(
            f"the files give different outputs ({gives}): their ratios compare different models, not a model "
            "before and after pruning"
        )
    out.update(budget_s=budget_s, min_runs=min(min_runs, runs), precision=None if budget_s is None else precision)
    if stopped is not None:
        left = [b for b in sizes if b not in samples]
        out["interrupted"] = True
        out["notes"].append(
            f"interrupted before batch size {', '.join(map(str, left))} {'was' if len(left) == 1 else 'were'} "
            "timed: these results are of the batch sizes timed before"
        )
        stopped.partial = out  # type: ignore[attr-defined]
        raise stopped
    return out


def _shapes(outputs: list[list[Any]]) -> str:
    return ", ".join(str(["batch", *o]) for o in outputs)


def latency_table(result: dict[str, Any]) -> str:
    """A markdown table of a :func:`benchmark` result, one row per file and batch size: latency
    percentiles in ms, samples/s, the p50 ratio to the first file with its spread, and whether it is
    outside the noise band (the band's half-width beside it); then the A/A control's p50 ratio and the timed
    runs per batch size, and each file's size (raw and gzip, the level the sizes say). ValueError for anything but
    such a result."""
    if not isinstance(result, dict) or not isinstance(result.get("files"), list) or not result["files"]:
        raise ValueError("latency_table(result=...): expected what sparsekit.onnx.benchmark returned (its 'files')")
    lines = [
        "| file | batch | p50 ms | p90 ms | p99 ms | samples/s | p50 vs first [spread] | significant |",
        "|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    labels = _labels([Path(f["path"]) for f in result["files"]])
    for i, f in enumerate(result["files"]):
        for b, lat in f["latency_ms"].items():
            ratio = f["ratio_to_first"][b]
            lo, hi = ratio["spread"]
            # 3 decimals, as report.md: at 2 a ratio of 0.948 read 0.95x beside a band of 0.950x-1.053x
            vs = "1 (ref)" if i == 0 else f"{ratio['p50']:.3f}x [{lo:.3f}-{hi:.3f}]"
            sig = "" if i == 0 else ("yes" if f["speedup_significant"][b] else "no")
            band = (f.get("noise_band") or {}).get(b)
            if sig and band is not None:  # the band it was judged against: ratios within 1/(1+n) .. 1+n are noise
                sig += f" (noise band {1 / (1 + band):.3f}x-{1 + band:.3f}x)"
            lines.append(
                f"| {labels[i]} | {b} | {ms_text(lat['p50'])} | {ms_text(lat['p90'])} | {ms_text(lat['p99'])} "
                f"| {f['throughput_per_s'][b]:,.0f} | {vs} | {sig} |"
            )
    noise = ", ".join(f"batch {b}: {c['ratio_p50']:.3f}" for b, c in result["control"].items())
    lines.append("")
    lines.append(f"A/A control (second session of the first file), p50 ratio: {noise}")
    done = result.get("runs_done") or {}
    if done:
        runs = ", ".join(f"batch {b}: {n}" for b, n in done.items())
        lines.append(f"Timed runs per file: {runs} (at most {result['runs']})")
    sizes = [
        f"{labels[i]} {f['bytes']:,} B (gzip level {f['gzip_level']}: {f['gzip_bytes']:,} B)"
        for i, f in enumerate(result["files"])
        if "bytes" in f and "gzip_bytes" in f and "gzip_level" in f
    ]
    if sizes:
        lines.append("Sizes: " + "; ".join(sizes))
    lines += [f"Note: {note}" for note in result.get("notes") or []]
    return "\n".join(lines)


def _labels(paths: list[Path]) -> list[str]:
    """Each file's name, with as many of its parent folders as tell it apart from the others (two runs'
    ``model.onnx`` become ``run-a/model.onnx`` and ``run-b/model.onnx``); the same file twice (however it is
    spelled: relative, absolute, through a link) keeps one label."""
    real = [p.resolve() for p in paths]
    depth = [1] * len(paths)
    while True:
        labels = [Path(*p.parts[-d:]).as_posix() for p, d in zip(paths, depth, strict=True)]
        clash = [i for i, lab in enumerate(labels) if labels.count(lab) > 1 and len(paths[i].parts) > depth[i]]
        clash = [i for i in clash if any(labels[j] == labels[i] and real[j] != real[i] for j in range(len(paths)))]
        if not clash:
            return labels
        for i in clash:
            depth[i] += 1


def _check_option_types(
    threads: Any, warmup: Any, runs: Any, min_runs: Any, seed: Any, budget_s: Any, precision: Any
) -> tuple[int, int, int, int, int]:
    """The counts as ints, after checking each option's type: a float run count, a string thread count or a
    seed of None failed inside numpy or onnxruntime with a TypeError of theirs (or, seed=None, fed unseeded
    data), where a bad option is an ExportError naming it."""
    counts = {"threads": threads, "warmup": warmup, "runs": runs, "min_runs": min_runs, "seed": seed}
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ExportError(f"benchmark({name}=...): expected an integer, got {value!r}")
    for name, number in {"budget_s": budget_s, "precision": precision}.items():
        if number is not None and (isinstance(number, bool) or not isinstance(number, int | float | np.number)):
            raise ExportError(f"benchmark({name}=...): expected a number or None, got {number!r}")
    return int(threads), int(warmup), int(runs), int(min_runs), int(seed)


def _check_batch_sizes(batch_sizes: Sequence[int] | int) -> list[int]:
    if isinstance(batch_sizes, (int, np.integer)):
        batch_sizes = [batch_sizes]
    sizes = list(dict.fromkeys(batch_sizes))  # dedupe, keep order
    bad = [b for b in sizes if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b <= 0]
    if not sizes or bad:
        raise ExportError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    return [int(b) for b in sizes]


# The input types the benchmark feeds (token ids as zeros: random_array), with the numpy dtype of each. A model
# exported in float16 (common for deployment) or float64 takes inputs of that dtype: refusing them left such a file
# no way to be timed here, while random_array draws them as it does float32.
_FED = {
    t: ORT_DTYPES[t] for t in ("tensor(float)", "tensor(float16)", "tensor(double)", "tensor(int64)", "tensor(int32)")
}


def _input_dims(
    session: ort.InferenceSession, path: Path, input_shape: Sequence[int] | None, sizes: list[int]
) -> list[int]:
    """The non-batch dims to feed: the model's own when static, else ``input_shape``'s."""
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type not in _FED or not inputs[0].shape:
        # A graph with no inputs (only constants) would otherwise read "the model takes ."
        got = ", ".join(f"{i.name}: {i.type} {i.shape}" for i in inputs) or "no input at all"
        # Say what to do too: this is a limit of the benchmark, not a fault in the user's file.
        raise ExportError(
            f"{path}: the benchmark feeds one float32 / float16 / float64 (or int64 / int32 token id) tensor with a "
            "batch dim; the model "
            f"takes {got}. Time it with onnxruntime's onnxruntime_perf_test, which generates every input, "
            "or benchmark a single-input version of the model"
        )
    batch, *rest = inputs[0].shape
    if isinstance(batch, int) and any(b != batch for b in sizes):
        others = ", ".join(str(b) for b in sizes if b != batch)
        if not 1 <= batch <= MAX_BATCH:
            # Suggesting that batch size named one the batch size option refuses (it takes 1..MAX_BATCH).
            why = (
                "which no batch size can feed"
                if batch < 1
                else f"above the largest batch size it takes ({MAX_BATCH:,})"
            )
            raise ExportError(
                f"{path}: the batch dim is fixed at {batch:,}, {why}, so it cannot be benchmarked; export it with "
                "a dynamic batch dim (torch.onnx.export's dynamic_axes, or sparsekit export)"
            )
        raise ExportError(
            f"{path}: the batch dim is fixed at {batch}, so batch size {others} cannot be fed; "
            f"benchmark it with {option('batch_size', str(batch))} alone, or export it with a dynamic batch dim "
            "(torch.onnx.export's dynamic_axes, or sparsekit export)"
        )
    if input_shape is None:
        if not all(isinstance(d, int) for d in rest):
            # An example of the input's own rank with its fixed dims: [1, 3, 32, 32] for a Conv1d's [n, 3, L] gave
            # a shape that the next run refused for not fitting.
            named = [d for d in rest if not isinstance(d, int)]
            example = [1, *(d if isinstance(d, int) else 32 for d in rest)]
            raise ExportError(
                f"{path}: input {inputs[0].name!r} has symbolic dims {inputs[0].shape}; pass the shape to feed, batch "
                f"first, with a size for {', '.join(map(str, named))}: e.g. {option('input_shape', str(example))}"
            )
        return rest
    try:
        user = [int(d) for d in input_shape]
    except (TypeError, ValueError) as e:
        raise ExportError(f"input shape must be integers like 1,3,32,32, got {input_shape!r}") from e
    user = user[1:] if len(user) == len(rest) + 1 else user
    fits = len(user) == len(rest) and all(not isinstance(m, int) or m == u for m, u in zip(rest, user, strict=True))
    if not fits or any(d <= 0 for d in user):
        shape = inputs[0].shape
        raise ExportError(
            f"{path}: input shape {list(input_shape)} does not fit the model's input {shape}; give "
            f"{option('input_shape')} the model's dims, batch first (its fixed dims as they are)"
        )
    return user


# The longest one untimed first run may take. A file is data: a Loop with a trip count of 10**15 (or any
# graph that never ends) must not hold `sparsekit bench` forever. The first run is done in a worker thread
# while the main thread waits, so Ctrl-C and SIGTERM are handled during it (onnxruntime's run releases the
# GIL but never returns to Python until it ends); RunOptions.terminate stops onnxruntime between nodes,
# inside Loop and If bodies too.
FIRST_RUN_LIMIT_S = 600.0


def _run_stoppably(session: ort.InferenceSession, feed: dict, limit_s: float) -> str | None:
    """``session.run(None, feed)`` in a worker thread: None when it ended, else why it was stopped (it
    took longer than ``limit_s``). Its exception is raised here; so is a KeyboardInterrupt or
    :class:`~sparsekit.errors.Terminated` that arrives meanwhile, once the run is stopped."""
    options = ort.RunOptions()
    outcome: list[BaseException] = []

    def work() -> None:
        try:
            session.run(None, feed, options)
        except BaseException as err:  # noqa: BLE001 - handed to the waiting thread
            outcome.append(err)

    worker = threading.Thread(target=work, name="sparsekit-bench-first-run", daemon=True)
    worker.start()
    deadline = time.monotonic() + limit_s
    stopped = None
    # Polled from 1 ms up to every 50 ms: a fixed 50 ms slept 50 ms for each file and batch size whose run took
    # well under one (0.3 s of the quick start's 0.47 s benchmark, six first runs), while a long run still costs
    # only a poll per 50 ms.
    pause = 0.001
    try:
        while worker.is_alive():
            time.sleep(pause)  # not join(timeout): a Ctrl-C that interrupts join() aborts the process at exit
            pause = min(pause * 2, 0.05)
            if time.monotonic() >= deadline:
                stopped = f"took longer than {limit_s:.0f} s"
                break
    finally:
        if worker.is_alive():  # out of time, or interrupted: stop it, then let it finish
            options.terminate = True
            worker.join()
    if stopped:
        return stopped
    if outcome:
        raise outcome[0]
    return None


def _first_run(session: ort.InferenceSession, feed: dict, path: Path, shape: list[int], cap: int | None = None) -> None:
    """One untimed run: a symbolic dim accepts any size, the layers behind it do not, so a shape that
    does not fit the graph is found here and reported as bad input, before any timing. A run that takes
    longer than :data:`FIRST_RUN_LIMIT_S` is stopped and reported; Ctrl-C stops it too."""
    try:
        stopped = _run_stoppably(session, feed, FIRST_RUN_LIMIT_S)
        if stopped:
            raise ExportError(
                f"{path}: one run on inputs of shape {shape} {stopped} and was stopped; a graph that runs that "
                "long (a Loop node's trip count?) cannot be benchmarked"
            )
    except ExportError:
        raise
    except Exception as err:  # noqa: BLE001 - onnxruntime's InvalidArgument / Fail / RuntimeException
        if _out_of_memory(err):
            room = (
                "" if cap is None else f" (it may take {cap / 2**30:.1f} GiB, {MEMORY_CAP_SHARE:.0%} of what is free)"
            )
            raise ExportError(
                f"{path}: one run on inputs of shape {shape} needs more memory than is available{room}; a tensor "
                "sized by the graph's own values (Range, Loop) or a batch too big: use a smaller batch size"
            ) from None
        if all(isinstance(d, int) for d in session.get_inputs()[0].shape[1:]):
            # Only the batch dim is symbolic, so the input shape option has nothing to change: the graph fixes the
            # batch inside (a Reshape to a constant shape, as tracing x.reshape(1, -1) writes).
            raise ExportError(
                f"{path}: onnxruntime cannot run it at batch size {shape[0]} ({one_line(err, 200)}); its input "
                "takes any batch size but the graph inside does not (a Reshape to a fixed shape?): benchmark it "
                f"at the batch size it was traced with (e.g. {option('batch_size', '1')}), or export it with the batch "
                "left free (x.reshape(x.shape[0], -1), x.flatten(1))"
            ) from None
        raise ExportError(
            f"{path}: onnxruntime cannot run it on inputs of shape {shape} ({one_line(err, 200)}); the symbolic "
            f"input dims accept any size but the layers do not: pass the shape the model was built for "
            f"({option('input_shape', '[1, 3, 32, 32]')})"
        ) from None


_UNSIZED_ACTIVATIONS = 16
# Of the memory available when the runs start, the share onnxruntime may take for new allocations while
# the files run (see _memory_cap).
MEMORY_CAP_SHARE = 0.8


@contextlib.contextmanager
def _memory_cap() -> Iterator[int | None]:
    """While the files run, new allocations may take at most :data:`MEMORY_CAP_SHARE` of the memory
    available now (Linux: the soft ``RLIMIT_DATA``, restored after); yields that many bytes, or None where
    no cap could be set. A file is data: a tensor whose size the graph computes from its own values
    (``Range(0, 3e9, 1)``, a Loop's outputs) cannot be sized in advance by :func:`_check_memory`, and
    without the cap one such file makes onnxruntime take every byte until the kernel kills the process;
    with it the allocation fails and :func:`_first_run` reports it."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        yield None
        return
    available, used = available_memory(), private_memory()
    if available is None or used is None:
        yield None
        return
    cap = int(MEMORY_CAP_SHARE * available)
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = used + cap
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft != resource.RLIM_INFINITY and soft <= limit:
        yield None  # a tighter limit is already set
        return
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    except (ValueError, OSError):
        yield None
        return
    try:
        yield cap
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def _out_of_memory(err: BaseException) -> bool:
    """Whether an onnxruntime failure is an allocation it could not make."""
    text = str(err)
    return isinstance(err, MemoryError) or "Failed to allocate memory" in text or "bad_alloc" in text


def _dims_given(input_shape: Sequence[int] | None) -> list[int] | None:
    """``input_shape`` past its batch dim when it reads as integers, else None (:func:`_input_dims` says why)."""
    try:
        return [int(d) for d in input_shape][1:] if input_shape is not None else None
    except (TypeError, ValueError):
        return None


def _activation_need(path: Path, dims: list[int]) -> int:
    """Bytes of the inputs and activations of one sample of ``dims`` for the file at ``path``."""
    # Shapes that inference cannot size: assume activations of up to 16x the input per layer stack.
    return activation_bytes(path, dims) or 4 * math.prod(dims) * (1 + _UNSIZED_ACTIVATIONS)


def _check_memory(
    files: list[Path], dims: list[list[int]], sizes: list[int], per_sample: list[int], available: int
) -> None:
    """Refuse a batch size whose inputs and activations (``per_sample``: each file's, one sample) cannot fit
    in the ``available`` memory, instead of being killed by the kernel halfway. Every session keeps its own
    buffers, so their needs add up (an upper bound: onnxruntime reuses memory between layers)."""
    need_one = sum(per_sample) + per_sample[0]  # + the A/A control
    if need_one > 0.8 * available:
        # Not even one sample fits: the file's input shape is the cause, and a smaller batch size no remedy.
        worst = max(range(len(files)), key=lambda i: per_sample[i])
        raise ExportError(
            f"{files[worst]}: one sample of shape {dims[worst]} needs about {per_sample[worst] / 2**30:,.1f} GiB "
            f"for its inputs and activations, more than the {available / 2**30:.1f} GiB available at any batch "
            f"size; give a smaller sample shape ({option('input_shape')}) if its input is dynamic, or benchmark a "
            "model with a smaller input"
        )
    batch = max(sizes)
    if batch * need_one > 0.8 * available:
        raise ExportError(
            f"batch size {batch} needs about {batch * need_one / 2**30:.1f} GiB for inputs and activations of "
            f"{len(files) + 1} onnxruntime sessions, more than the {available / 2**30:.1f} GiB available; "
            "use a smaller batch size"
        )


# The clock of every timed run and budget: a name tests can replace.
_now = time.perf_counter_ns


def _warm_up(
    sessions: list[ort.InferenceSession],
    feeds: list[dict],
    warmup: int,
    budget_ns: int | None,
    advance: Callable[[int], None],
) -> None:
    """``warmup`` untimed rounds (each session once), stopping after any round once they took
    ``budget_ns`` per session."""
    start = _now()
    for done in range(1, warmup + 1):
        for s, feed in zip(sessions, feeds, strict=True):
            s.run(None, feed)
        advance(1)
        if budget_ns is not None and _now() - start >= budget_ns * len(sessions):
            advance(warmup - done)
            return


def _timed_runs(
    sessions: list[ort.InferenceSession],
    feeds: list[dict],
    runs: int,
    advance: Callable[[int], None],
    budget_ns: int | None = None,
    min_runs: int = 1,
    precision: float | None = None,
) -> np.ndarray:
    """Up to ``runs`` rounds, each session timed once per round (ns); shape ``(sessions, rounds done)``.
    Stops after a round once at least ``min_runs`` rounds are done and either the rounds took ``budget_ns``
    per session (wall time, the gaps between runs included) or, after a whole number of blocks and
    :data:`PRECISION_MIN_SHARE` of that time, every ratio's half block spread is within ``precision``."""
    n = len(sessions)
    times = np.zeros((n, runs), dtype=np.int64)
    start = _now()
    for r in range(runs):
        # Rotate who goes first so no file always runs right after the same neighbour.
        for i in [(r + k) % n for k in range(n)]:
            t0 = _now()
            sessions[i].run(None, feeds[i])
            times[i, r] = _now() - t0
        advance(1)
        done = r + 1
        if budget_ns is None or done < min_runs or done >= runs:
            continue
        spent = _now() - start
        if spent >= budget_ns * n or (
            precision is not None
            and done % N_BLOCKS == 0
            and spent >= PRECISION_MIN_SHARE * budget_ns * n
            and _precise(times[:, :done], precision)
        ):
            advance(runs - done)
            return times[:, :done]
    return times


def _precise(times: np.ndarray, precision: float) -> bool:
    """Is every session's p50 ratio to session 0 known to within ``precision`` (half its block spread,
    log scale; see :func:`_ratio`)?"""
    half = max(_half_spread(_ratio(times, i)) for i in range(1, times.shape[0]))
    return half <= math.log1p(precision)


def _half_spread(ratio: dict[str, Any]) -> float:
    lo, hi = ratio["spread"]
    return (math.log(hi) - math.log(lo)) / 2


def _ratio(times: np.ndarray, i: int) -> dict[str, Any]:
    """p50 of session ``i`` over p50 of session 0, overall and per block of runs."""
    blocks = np.array_split(np.arange(times.shape[1]), min(N_BLOCKS, times.shape[1]))
    per_block = [float(np.median(times[i, blk]) / np.median(times[0, blk])) for blk in blocks]
    p50 = float(np.median(times[i]) / np.median(times[0]))
    # The ratio of overall medians can fall outside the block ratios; widen so the range holds it.
    return {"p50": p50, "spread": [min(*per_block, p50), max(*per_block, p50)]}


def _significant(ratio: dict[str, Any], control: dict[str, Any]) -> bool:
    """Is the ratio outside the noise band: the farthest A/A ratio from 1 (overall or in any
    block of runs), half the file's own block spread, or :data:`SESSION_FLOOR` (every ratio from 0.95 to
    1.05 lies inside), whichever is wider?

    Measured on a log scale (~ |ratio - 1| near 1) so that a 100x speedup still counts when one
    noisy A/A run is off by 2x; on a linear scale no speedup could exceed a noise of 1.
    """
    return abs(math.log(ratio["p50"])) > _band(ratio, control)


def _band(ratio: dict[str, Any], control: dict[str, Any]) -> float:
    """Half-width of the noise band on a log scale (see :func:`_significant`)."""
    aa = [control["ratio_p50"], *control["spread"]]
    return max(*(abs(math.log(r)) for r in aa), _half_spread(ratio), _LOG_FLOOR)


def _noise(ratio: dict[str, Any], control: dict[str, Any]) -> float:
    """The band as a ratio: a p50 ratio from ``1 / (1 + noise)`` to ``1 + noise`` (log-symmetric) is not called
    a change. Rounded up to 4 decimals, so a reader of the rounded figure never calls a change that the
    unrounded band holds (0.95 stays inside the floor's band)."""
    return math.ceil(math.expm1(_band(ratio, control)) * 1e4) / 1e4


def _summarise(
    files: list[Path],
    dims: list[list[int]],
    samples: dict[int, np.ndarray],
    threads: int,
    provider: str,
    warmup: int,
    runs: int,
    seed: int,
) -> dict[str, Any]:
    control = {}
    for b, times in samples.items():
        r = _ratio(times, len(files))
        control[str(b)] = {"ratio_p50": r["p50"], "noise": abs(r["p50"] - 1.0), "spread": r["spread"]}
    # Every file's gzip size at one level, the largest file's (9 up to 16 MiB, else 6), so they compare.
    level = gzip_level(max(onnx_bytes(path) for path in dict.fromkeys(files)))
    out_files = []
    for i, path in enumerate(files):
        latency, throughput, ratios, significant, bands = {}, {}, {}, {}, {}
        for b, times in samples.items():
            ms = times[i] / 1e6
            p50, p90, p99 = np.percentile(ms, [50, 90, 99])
            stats = {"p50": p50, "p90": p90, "p99": p99, "mean": ms.mean()}
            # Rounded to the nanosecond the clock resolves; more digits are float noise.
            latency[str(b)] = {k: round(float(v), 6) for k, v in stats.items()}
            throughput[str(b)] = round(float(b / (p50 / 1e3)), 1)
            ratios[str(b)] = r = _ratio(times, i)
            significant[str(b)] = _significant(r, control[str(b)])
            bands[str(b)] = _noise(r, control[str(b)])
        out_files.append(
            {
                "path": str(path),
                **size_report(path, level=level),
                **{k: v for k, v in onnx_macs(path).items() if k != "layers"},
                "input_shape": ["batch", *dims[i]],
                "latency_ms": latency,
                "throughput_per_s": throughput,
                "ratio_to_first": ratios,
                "speedup_significant": significant,
                "noise_band": bands,
            }
        )
    labels = _labels(files)
    others = [f"{labels[i]} takes {['batch', *d]}" for i, d in enumerate(dims) if d != dims[0]]
    notes = (
        [
            f"the files take different inputs ({labels[0]} takes {['batch', *dims[0]]}; {'; '.join(others)}): "
            "their ratios compare different models, not a model before and after pruning"
        ]
        if others
        else []
    )
    return {
        "notes": notes,
        "threads": threads,
        "provider": provider,
        "warmup": warmup,
        "runs": runs,
        "runs_done": {str(b): int(t.shape[1]) for b, t in samples.items()},
        "seed": seed,
        "batch_sizes": [int(b) for b in samples],
        "onnxruntime": ort.__version__,
        "files": out_files,
        "control": control,
    }


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda n: None
        return
    with global_rng_kept():  # rich's first import draws from Python's generator: a user's seeded script goes on
        from rich.console import Console
        from rich.progress import Progress

    console = Console(stderr=True)
    if not console.is_terminal:  # a log file or a pipe: a bar that redraws is noise there (a stray blank line)
        yield lambda n: None
        return
    # No auto-refresh thread: it would compete for the CPU with the runs being timed. We redraw
    # between runs instead, at most ten times a second.
    with Progress(console=console, auto_refresh=False, transient=True) as bar:
        task = bar.add_task("onnxruntime benchmark", total=total)
        last = [0.0]

        def advance(n: int) -> None:
            bar.advance(task, n)
            if time.perf_counter() - last[0] > 0.1:
                last[0] = time.perf_counter()
                bar.refresh()

        yield advance
