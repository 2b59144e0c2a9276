"""The `sparsekit` command. The only place where SparsekitError becomes an exit code.

Exit codes: 0 success; 2 bad input (one ``Error:`` line, no traceback); 1 unexpected failure
(traceback with --debug); 130 interrupted.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .errors import ExportError, SparsekitError, one_line, render
from .recipe_catalog import RECIPES_DIR as RECIPES_DIR  # noqa: F401 - kept importable from here
from .recipe_catalog import find_recipe

# The flag for each caller option a library message may point to (see sparsekit.errors.option):
# library code words its remedies neutrally; only this module knows the command line.
FLAGS = {
    "arch": "--arch",
    "data": "--data",
    "input_shape": "--input-shape",
    "output": "-o",
    "overwrite": "--overwrite",
    "resume": "--resume",
    "set": "--set",
    "trust_code": "--trust-code",
    "trust_model_file": "--trust-model-file",
}


def _flag(name: str, value: str) -> str:
    flag = FLAGS.get(name, name)
    if not value:
        return flag + (" pkg.module:callable" if name == "arch" else "")
    if name == "input_shape":
        value = value.strip("[]").replace(" ", "")
    return f"{flag} {value}"


def _fail(message: str, code: int) -> None:
    import os

    rank = os.environ.get("RANK", "0")
    # Under torchrun every process prints its own line: say which, unless it is rank 0's.
    where = f"rank {rank}: " if rank not in ("", "0") and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else ""
    click.echo(f"Error: {where}{render(message, _flag)}", err=True)
    sys.exit(code)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one clear line and an exit code; --debug shows the traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.get("debug", False)
        logging.basicConfig(
            level=logging.DEBUG if debug else logging.WARNING,
            stream=sys.stderr,
            format="%(levelname)s %(name)s: %(message)s",
        )
        if not debug:
            # Library warnings (torch on odd tensors in a file, exporters, onnxruntime) are not for the
            # user; sparsekit's own advice goes through logging. --debug shows them all.
            warnings.filterwarnings("ignore")
        try:
            return fn(*args, **kwargs)
        except SparsekitError as err:
            if debug:
                traceback.print_exc()
            _fail(err.render(_flag), err.exit_code)
        except OSError as err:  # a path the user gave: missing folder, a file where a folder should be, ...
            if debug:
                traceback.print_exc()
            where = err.filename or ""
            _fail(f"{where}: {err.strerror or err}; check the path and its permissions", 2)
        except KeyboardInterrupt:
            resume = {
                "prune": "; `--resume` continues from the last finished epoch",
                "sensitivity": "; `--resume` continues the analysis from the last finished probe",
            }.get(fn.__name__, "")
            click.echo(f"Interrupted: finished files are complete, unfinished ones were not written{resume}.", err=True)
            sys.exit(130)
        except (click.ClickException, click.exceptions.Exit):
            raise  # click prints usage errors itself, with exit code 2
        except SystemExit as err:  # user code (a model's forward, a dataset) called sys.exit()
            if debug:
                traceback.print_exc()
            _fail(
                f"user code called sys.exit({err.code!r}) during the run (a model's forward, a data loader or a "
                "factory); it must return or raise, not exit",
                2,
            )
        except MemoryError as err:
            if debug:
                traceback.print_exc()
            _fail(f"out of memory ({one_line(err)}); use a smaller model, batch or input, or more memory", 2)
        except Exception as err:  # noqa: BLE001 - the CLI edge: report, never dump a traceback by default
            if debug:
                traceback.print_exc()
            if isinstance(err, RuntimeError) and "can't allocate memory" in str(err):  # torch's allocator
                _fail(f"out of memory ({one_line(err, 200)}); use a smaller model, batch or input", 2)
            if _peer_failed(err):
                _fail(
                    f"another process of this distributed run stopped ({one_line(err, 160)}); its own Error "
                    "line above says why",
                    2,
                )
            _fail(f"unexpected failure: {one_line(err)} (run again with --debug for a traceback and report it)", 1)
        except BaseException as err:  # noqa: BLE001 - GeneratorExit & co. raised by user code (forward, data)
            if debug:
                traceback.print_exc()
            _fail(f"user code raised {one_line(err)}, which only Python itself should raise; fix that code", 2)

    return wrapper


def _device_flag(value: str | None) -> str | None:
    import re

    if value is not None and not re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]{1,3})?", value):
        raise click.BadParameter(f"{value!r}: use auto, cpu, cuda, cuda:N or mps")
    return value


def _peer_failed(err: BaseException) -> bool:
    """A collective broke because another torchrun process exited (gloo / NCCL / store errors)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1 or "torch.distributed" not in sys.modules:
        return False
    import torch.distributed as dist

    text = str(err)
    return isinstance(err, dist.DistError) or any(
        mark in text for mark in ("gloo", "NCCL", "Connection closed by peer", "Connection reset by peer")
    )


def debug_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--debug`` flag every command takes (tracebacks, debug logs, library warnings)."""
    return click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")(fn)


# Options several commands share, declared once so their names and help stay the same everywhere.
arch_option = click.option("--arch", help="Architecture for a state_dict/.safetensors MODEL: pkg.module:callable.")
data_option = click.option(
    "--data", help="Override data.source: digits | mnist5k | synthetic | FILE.npz | pkg.module:callable."
)
trust_model_file_option = click.option(
    "--trust-model-file",
    is_flag=True,
    help="Allow loading a pickled nn.Module/TorchScript MODEL (it can run code: only files you trust).",
)


def trust_code_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--trust-code`` flag of the commands that may build a model or load data named in a file."""
    return click.option(
        "--trust-code",
        is_flag=True,
        help="Run the model factory / data callable that MODEL or RECIPE names, and remember its module as "
        "trusted (see `sparsekit trust`). Without it, code named in a file runs only if you name it "
        "yourself with --arch/--data or trusted its module before.",
    )(fn)


def _load_native(*modules: str) -> None:
    """Import torch / onnxruntime with Ctrl-C held until they are loaded: a KeyboardInterrupt raised
    inside their C++ start-up aborts the process (SIGABRT) instead of exiting 130."""
    import importlib

    from .fsutil import sigint_deferred

    with sigint_deferred():
        for module in modules:  # fixed names given by the commands below, never from a file
            importlib.import_module(module)


def _emit(data: Any, as_json: bool, text: str) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo(text)


def _diff(value: float | None) -> str:
    return "n/a (outputs not finite)" if value is None else f"{value:.2e}"


def _shape(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        dims = [int(v) for v in value.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated integers like 1,3,32,32") from None
    if not dims or any(d <= 0 for d in dims):
        raise click.BadParameter(f"{value!r}: dimensions must be positive integers, batch first (1,784)")
    return dims


def _kwargs(value: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except RecursionError:
        raise click.BadParameter(f"{value[:40]!r}…: nested too deeply") from None
    except json.JSONDecodeError as err:
        raise click.BadParameter(f"{value!r}: not JSON ({err.msg}); e.g. --kwargs '{{\"hidden\": 32}}'") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter(f"{value!r}: expected a JSON object of keyword arguments for --arch")
    return parsed


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="sparsekit")
def main() -> None:
    """Make trained PyTorch models smaller and faster from a YAML recipe.

    \b
    Typical run (see README.md):
      sparsekit recipes                                  # shipped recipes
      sparsekit validate lenet-gradual-magnitude-90 lenet.pt --arch examples.models:lenet_300_100
      sparsekit prune lenet.pt lenet-gradual-magnitude-90 --arch examples.models:lenet_300_100 -o out
      sparsekit inspect out/model.pt --arch examples.models:lenet_300_100
      sparsekit bench out/dense.onnx out/model.onnx

    Files are data: model files are loaded weights-only, recipes with yaml.safe_load, and a model
    factory or data callable named inside a file runs only if you name it yourself (--arch, --data)
    or trust its module (--trust-code, `sparsekit trust`). See SECURITY.md.
    Exit codes: 0 ok, 2 bad input, 1 bug, 130 interrupted.
    """


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("recipe")
@click.option(
    "-o",
    "--output",
    "out",
    default="sparsekit-out",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Output folder (model.pt, model.onnx, dense.onnx, report.json/.md, plots, checkpoints/).",
)
@arch_option
@data_option
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY.PATH=VALUE",
    help="Override a recipe field, e.g. --set finetune.epochs=2 --set pruning.0.sparsity=0.8.",
)
@click.option("--resume", is_flag=True, help="Continue an interrupted run in the output folder.")
@click.option("--overwrite", is_flag=True, help="Replace the results in a non-empty output folder.")
@trust_model_file_option
@trust_code_option
@click.option(
    "--device",
    metavar="auto|cpu|cuda[:N]|mps",
    callback=lambda ctx, param, value: _device_flag(value),
    help="Where to train (overrides finetune.device, default auto: CUDA when available). Under torchrun "
    "each process uses cuda:LOCAL_RANK.",
)
@click.option(
    "--log-dir",
    type=click.Path(path_type=Path),
    help="Write per-step and per-epoch metrics (CSV; TensorBoard when installed) to a new folder in DIR "
    "(finetune.log: true writes them to OUT/logs instead).",
)
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout (logs stay on stderr).")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@debug_option
@handle_errors
def prune(
    model: Path,
    recipe: str,
    out: Path,
    arch: str | None,
    data: str | None,
    overrides: tuple[str, ...],
    resume: bool,
    overwrite: bool,
    trust_model_file: bool,
    trust_code: bool,
    device: str | None,
    log_dir: Path | None,
    as_json: bool,
    no_progress: bool,
    debug: bool,
) -> None:
    """Prune MODEL with RECIPE while fine-tuning, then export ONNX, check parity and benchmark.

    RECIPE is a YAML file or the name of a shipped recipe (see `sparsekit recipes`).

    \b
    Example:
      sparsekit prune lenet.pt lenet-gradual-magnitude-90 --arch examples.models:lenet_300_100 -o out
    \b
    Several processes (DistributedDataParallel; gloo on CPU, nccl on GPU), rank 0 writes DIR:
      torchrun --nproc-per-node=2 -m sparsekit prune lenet.pt lenet-gradual-magnitude-90 \\
          --arch examples.models:lenet_300_100 -o out

    Outputs are built in DIR/.sparsekit/next and moved into DIR when the run ends, so an interrupted
    or failed run leaves earlier results as they were. --overwrite replaces only files an earlier
    sparsekit run wrote (listed in DIR/.sparsekit/manifest.json); a folder holding anything else is
    refused. DIR may not be or contain MODEL, RECIPE or the data file.
    """
    _load_native("torch", "onnxruntime")
    from .pipeline import run_prune
    from .recipe import load_recipe
    from .report import render_summary

    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite contradict each other: pick one")
    if device:
        overrides = (*overrides, f"finetune.device={device}")
    rec = load_recipe(find_recipe(recipe), list(overrides))
    report = run_prune(
        model,
        rec,
        out,
        arch=arch,
        data=data,
        trust=trust_model_file,
        trust_code=trust_code,
        overwrite=overwrite,
        resume=resume,
        progress=not no_progress,
        notify=lambda m: click.echo(m, err=True),
        log_dir=log_dir,
    )
    if report is None:
        return  # a distributed run's rank other than 0: rank 0 reports
    _emit(report.to_json(), as_json, render_summary(report, out))


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", "out", type=click.Path(path_type=Path), help="Output .onnx (default: MODEL with .onnx)."
)
@arch_option
@click.option("--kwargs", "arch_kwargs", help="Keyword arguments for --arch as JSON, e.g. '{\"hidden\": 32}'.")
@click.option("--input-shape", help="Input shape with batch first, e.g. 1,3,32,32 (default: from the checkpoint).")
@click.option(
    "--opset",
    default=18,
    show_default=True,
    type=click.IntRange(13, 23),
    help="ONNX opset of the file (read back to check). dynamo writes 18-23 itself; below 18 it falls back "
    "to the torchscript exporter when it cannot convert.",
)
@click.option(
    "--exporter",
    type=click.Choice(["auto", "dynamo", "torchscript"]),
    default="auto",
    show_default=True,
    help="auto: the TorchScript exporter's file when it has the opset, agrees with torch and kept every zero "
    "(10-30x faster on small models), else dynamo.",
)
@click.option(
    "--quantize",
    type=click.Choice(["none", "int8"]),
    default="none",
    show_default=True,
    help="int8: the file at -o is the int8 model (static QDQ calibrated on --data, dynamic without it); "
    "the fp32 model it is quantized from is checked, then kept only with --keep-fp32.",
)
@click.option(
    "--data", help="Calibration/eval data for --quantize int8: digits | mnist5k | FILE.npz | pkg.module:callable."
)
@click.option(
    "--keep-fp32",
    is_flag=True,
    help="With --quantize int8: also write the fp32 model, as FILE.fp32.onnx beside the int8 FILE.onnx.",
)
@click.option(
    "--storage",
    type=click.Choice(["auto", "sparse", "dense"]),
    default="auto",
    show_default=True,
    help="How FILE stores its weights. auto: as sparse initializers where that is smaller after gzip and "
    "onnxruntime's outputs stay bit-identical (saves disk, not time: onnxruntime densifies at load).",
)
@trust_model_file_option
@trust_code_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")
@debug_option
@handle_errors
def export(
    model: Path,
    out: Path | None,
    arch: str | None,
    arch_kwargs: str | None,
    input_shape: str | None,
    opset: int,
    exporter: str,
    quantize: str,
    data: str | None,
    keep_fp32: bool,
    storage: str,
    trust_model_file: bool,
    trust_code: bool,
    as_json: bool,
    debug: bool,
) -> None:
    """Export MODEL to ONNX, check it with onnx.checker and its parity with torch in onnxruntime.

    Sizes count any external-data file. With --quantize int8 the file at -o is the int8 model: the
    fp32 export is checked first (parity, zeros), then quantized; every pruned weight must still be
    exactly zero, and with --data int8 accuracy is reported next to fp32. The fp32 file is kept only
    with --keep-fp32 (FILE.fp32.onnx). An existing output file is replaced only if sparsekit wrote it.

    \b
    Example:
      sparsekit export out/model.pt -o pruned.onnx --arch examples.models:lenet_300_100 --quantize int8
    """
    if data and quantize != "int8":  # checked before anything is loaded or written
        raise click.UsageError("--data is only used with --quantize int8")
    if keep_fp32 and quantize != "int8":
        raise click.UsageError("--keep-fp32 is only used with --quantize int8 (without it -o is the fp32 model)")
    _load_native("torch", "onnxruntime")
    from .modelio import infer_input_shape, read_model
    from .onnx import export_onnx
    from .onnx.export import export_int8

    out = out or model.with_suffix(".onnx")
    fp32_out = out.with_suffix(".fp32.onnx") if keep_fp32 else None
    targets = [out]
    if fp32_out is not None:
        targets.append(fp32_out)
    _check_export_targets(model, targets)
    loaded = read_model(
        model,
        arch,
        kwargs=_kwargs(arch_kwargs),
        input_shape=_shape(input_shape),
        trust=trust_model_file,
        trust_code=trust_code,
    )
    shape = _shape(input_shape) or loaded.input_shape or infer_input_shape(loaded.model)
    if not shape:
        raise ExportError(f"{model}: cannot tell the input shape; pass --input-shape, e.g. --input-shape 1,3,32,32")
    bundle = None
    if data:  # loaded before anything is written, so bad data leaves no files behind
        from .data import load_data

        bundle = load_data(data, input_shape=shape)
    from .onnx import choose_storage

    if quantize == "int8":
        res = export_int8(loaded.model, out, shape, data=bundle, fp32_path=fp32_out, opset=opset, exporter=exporter)
        fp32 = f"Wrote {fp32_out} (fp32, " if fp32_out is not None else "Exported fp32, not kept ("
    else:
        res = export_onnx(loaded.model, out, shape, opset=opset, exporter=exporter)
        fp32 = f"Wrote {out} ("
    st = res["storage"] = choose_storage(out, out, storage)
    written = res["int8"] if quantize == "int8" else res  # the sizes of the file at -o are the shipped file's
    written["bytes"], written["gzip_bytes"] = st["bytes"], st["gzip_bytes"]
    lines = [
        f"{fp32}opset {res['opset']}, {res['exporter']} exporter; {res['bytes']:,} B, gzip "
        f"{res['gzip_bytes']:,} B); parity max diff "
        f"{_diff(res['parity']['max_abs_diff'])} ({'ok' if res['parity']['ok'] else 'FAILED'}"
        f"{': ' + res['parity']['error'] if res['parity'].get('error') else ''}), "
        f"zeros kept: {res['zeros']['zeros_ok']}"
    ]
    if res.get("fallback"):
        lines.append(f"  {res['fallback']}")
    if quantize == "int8":
        q = res["int8"]
        lines.append(
            f"Wrote {q['path']} ({q['mode']} int8, {q['bytes']:,} B = {q['bytes'] / q['fp32_bytes']:.2f}x fp32, "
            f"gzip {q['gzip_bytes']:,} B); pruned zeros still zero: {q['zeros']['zeros_ok']}"
        )
        if q.get("eval"):
            ev = q["eval"]
            lines.append(
                f"  accuracy fp32 {ev['fp32_accuracy']:.4f}, int8 {ev['int8_accuracy']:.4f}, "
                f"top-1 agreement {ev['top1_agreement']:.4f} on {ev['samples']} samples"
            )
    if st["encoding"] == "sparse":
        lines.append(
            f"Stored {out} with sparse initializers: {st['bytes']:,} B, gzip {st['gzip_bytes']:,} B "
            f"({st['gzip_bytes'] / st['dense']['gzip_bytes']:.3f}x of dense storage; saves disk, not time)"
        )
    _emit(res, as_json, "\n".join(lines))


def _check_export_targets(model: Path, targets: list[Path]) -> None:
    """Refuse to write over the input or over a file sparsekit did not write (before any work)."""
    from .errors import OutputError
    from .onnx import external_data_files, written_by_sparsekit

    src = model.resolve()
    for target in targets:
        if target.resolve() == src:
            raise OutputError(f"-o {target}: is the input MODEL; choose another output file")
        if target.is_dir():
            raise OutputError(f"-o {target}: is a folder; give the .onnx file to write, e.g. -o {target}/model.onnx")
        ours = not target.is_symlink() and written_by_sparsekit(target)
        data = target.parent / f"{target.name}.data"  # where external data (models over 1.8 GB) goes
        data_ours = ours and not data.is_symlink() and data.name in external_data_files(target)
        for path, owned in ((target, ours), (data, data_ours)):
            if (path.exists() or path.is_symlink()) and not owned:
                raise OutputError(
                    f"{path}: exists and sparsekit did not write it (or it changed since); sparsekit never "
                    "replaces your files: choose another -o or move it away"
                )


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-b",
    "--batch-size",
    "batch_sizes",
    multiple=True,
    type=int,
    default=(1, 32),
    show_default=True,
    help="Repeat for several batch sizes.",
)
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1), help="onnxruntime intra-op threads.")
@click.option("--warmup", default=20, show_default=True, type=click.IntRange(0))
@click.option(
    "--runs", default=200, show_default=True, type=click.IntRange(1), help="Timed runs per file and batch size."
)
@click.option("--provider", default="CPUExecutionProvider", show_default=True)
@click.option("--input-shape", help="Input shape when the ONNX file has symbolic dims besides batch, e.g. 1,3,32,32.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@debug_option
@handle_errors
def bench(
    files: tuple[Path, ...],
    batch_sizes: tuple[int, ...],
    threads: int,
    warmup: int,
    runs: int,
    provider: str,
    input_shape: str | None,
    as_json: bool,
    no_progress: bool,
    debug: bool,
) -> None:
    """Benchmark ONNX FILES in onnxruntime, interleaved (A B A B ...), with ratios to the first file
    and an A/A control (the first file against itself) that shows the noise floor."""
    _load_native("onnxruntime")
    from .onnx import benchmark, latency_table

    if any(b <= 0 for b in batch_sizes):
        raise ExportError(f"--batch-size {min(batch_sizes)}: batch sizes must be > 0")
    res = benchmark(
        list(files),
        list(batch_sizes),
        threads=threads,
        warmup=warmup,
        runs=runs,
        provider=provider,
        input_shape=_shape(input_shape),
        progress=not no_progress and not as_json,
    )
    _emit(res, as_json, latency_table(res))


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@arch_option
@click.option("--kwargs", "arch_kwargs", help="Keyword arguments for --arch as JSON, e.g. '{\"hidden\": 32}'.")
@click.option("--input-shape", help="Input shape for MACs, batch first (default: from the checkpoint).")
@trust_model_file_option
@trust_code_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")
@debug_option
@handle_errors
def inspect(
    model: Path,
    arch: str | None,
    arch_kwargs: str | None,
    input_shape: str | None,
    trust_model_file: bool,
    trust_code: bool,
    as_json: bool,
    debug: bool,
) -> None:
    """Per-layer params, nonzeros, sparsity and MACs of a model file (.pt, .safetensors or .onnx).

    An .onnx file is read as data (nothing in it runs); its sizes count any external-data file.

    \b
    Example:
      sparsekit inspect out/model.pt --arch examples.models:lenet_300_100
      sparsekit inspect out/model.onnx --json
    """
    _load_native("onnxruntime" if model.suffix == ".onnx" else "torch")
    from .inspection import inspect as inspect_file

    res = inspect_file(
        model,
        arch=arch,
        kwargs=_kwargs(arch_kwargs),
        input_shape=_shape(input_shape),
        trust=trust_model_file,
        trust_code=trust_code,
    )
    if model.suffix == ".onnx":
        lines = [
            f"{model}: {res['params']:,} params, {res['nonzero_params']:,} nonzero (sparsity {res['sparsity']:.3f})",
            f"size {res['bytes']:,} B raw, {res['gzip_bytes']:,} B gzip "
            f"({res['gzip_bytes_per_nonzero'] or 0:.2f} gzip B per nonzero weight)",
            f"MACs at batch 1: {res['macs']:,} (nonzero weights only: {res['effective_macs']:,})",
        ]
        _emit(res, as_json, "\n".join(lines))
        return
    shape, rows = res["input_shape"], res["layers"]
    lines = [
        f"{model}: {res['factory'] or 'unknown factory'}, input {shape or '? (pass --input-shape for MACs)'}",
        f"{'layer':24} {'type':8} {'shape':18} {'params':>10} {'nonzero':>10} {'sparsity':>8} {'nonzero MACs':>12}",
    ]
    for r in rows:
        lines.append(
            f"{r['name']:24} {r['type']:8} {'x'.join(map(str, r['shape'])):18} {r['params']:>10,} "
            f"{r['nonzero_params']:>10,} {r['sparsity']:>8.3f} {r.get('effective_macs', 0):>12,}"
        )
    lines.append(
        f"total params {res['params']:,}, nonzero {res['nonzero_params']:,}, prunable sparsity "
        f"{res['sparsity']:.3f}"
        + (f", MACs {res['macs']:,} (nonzero {res['effective_macs']:,})" if "macs" in res else "")
    )
    _emit(res, as_json, "\n".join(lines))


@main.command()
@click.argument("recipe")
@click.argument("model", required=False, type=click.Path(path_type=Path))
@arch_option
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a recipe field.")
@click.option(
    "--steps-per-epoch",
    default=100,
    show_default=True,
    type=click.IntRange(1),
    help="Batches per epoch assumed for the dry run.",
)
@trust_code_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")
@debug_option
@handle_errors
def validate(
    recipe: str,
    model: Path | None,
    arch: str | None,
    overrides: tuple[str, ...],
    steps_per_epoch: int,
    trust_code: bool,
    as_json: bool,
    debug: bool,
) -> None:
    """Check RECIPE; with MODEL, a dry run: layers each method matches and its target per epoch.

    Without MODEL nothing the recipe names is imported. With MODEL the architecture is built, so a
    factory named in RECIPE or MODEL needs --arch (or --trust-code) as for `prune`. With MODEL and
    `sparsity: auto` / `ratio: auto` entries, the data is loaded and the sensitivity analysis runs (as in
    `prune`; `target_latency` also exports and times the model) to show the per-layer values chosen.
    """
    from .planning import allocation_lines, plan
    from .recipe import load_recipe

    path = find_recipe(recipe)
    rec = load_recipe(path, list(overrides))
    if model is not None:
        _load_native("torch")
    res = plan(rec, model, arch=arch, steps_per_epoch=steps_per_epoch, trust_code=trust_code)
    res["recipe"] = str(path)
    auto_lines: list[str] = []
    if model is not None and any(a["auto"] for a in res.get("allocation", [])):
        # The values prune would choose need the data: analyse now (the model was built already).
        from .analysis import allocate_for_run, allocation_summary
        from .pipeline import check_inputs

        inputs = check_inputs(model, rec, arch=arch, trust_code=trust_code)
        rec, _, allocation = allocate_for_run(inputs, rec, [], progress=not as_json)
        res = plan(rec, model, arch=arch, steps_per_epoch=steps_per_epoch, trust_code=trust_code)
        res.update(recipe=str(path), auto_allocation=allocation)
        auto_lines = [allocation_summary(allocation)] if allocation else []
    lines = [f"{path}: valid ({len(rec.pruning)} method(s), {rec.finetune.epochs} fine-tuning epoch(s))"]
    if model is None:
        for field, spec in res["names_code"].items():
            lines.append(
                f"{field} names code {spec}: not imported; prune runs it only when confirmed "
                "(--arch/--data, --trust-code or a trusted module)"
            )
    reh = res.get("rehearsal") or {}
    if reh.get("events"):
        parity = reh.get("parity") or {}
        lines.append(
            f"rehearsed {reh['events']} channel-removal event(s) on a copy: forward ok after each, ONNX parity "
            f"{'ok' if parity.get('ok') else 'not checked' if not parity else 'FAILED'}"
        )
        for row in reh.get("methods", []):
            for name, aim in row.get("per_layer", {}).items():
                why = f" ({aim['reason']})" if aim.get("reason") else ""
                lines.append(
                    f"  pruning[{row['index']}] {name}: {aim['achieved']:.3f} of channels removed, "
                    f"{aim['asked']:.3f} asked{why}"
                )
    for m in res["methods"]:
        lines.append(f"pruning[{m['index']}] {m['method']}: {', '.join(m['layers'])}")
        for row in m["left_out"]:
            lines.append(f"  left out {row['name']} ({row['type']}): {row['reason']}")
        if m["targets_per_epoch"]:
            lines.append(
                "  target after epoch: " + ", ".join(f"{e + 1}: {t:.3f}" for e, t in enumerate(m["targets_per_epoch"]))
            )
    lines += allocation_lines(res) + auto_lines
    _emit(res, as_json, "\n".join(lines))


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("recipe")
@click.option(
    "-o",
    "--output",
    "out",
    default="sparsekit-sensitivity",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Output folder (sensitivity.json, sensitivity.png, sensitivity.md; allocation.json for auto entries).",
)
@arch_option
@data_option
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a recipe field.")
@click.option(
    "--max-batches",
    type=click.IntRange(1),
    help="Validation batches per evaluation (default: all; fewer is faster and noisier).",
)
@click.option("--resume", is_flag=True, help="Continue an interrupted analysis in the output folder.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier analysis in the output folder.")
@trust_model_file_option
@trust_code_option
@click.option("--json", "as_json", is_flag=True, help="Print the table, ranking and allocation as JSON.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@debug_option
@handle_errors
def sensitivity(
    model: Path,
    recipe: str,
    out: Path,
    arch: str | None,
    data: str | None,
    overrides: tuple[str, ...],
    max_batches: int | None,
    resume: bool,
    overwrite: bool,
    trust_model_file: bool,
    trust_code: bool,
    as_json: bool,
    no_progress: bool,
    debug: bool,
) -> None:
    """Per-layer sensitivity: prune each layer RECIPE selects alone, one shot, no fine-tuning.

    Every layer the recipe's magnitude / gradient entries select is pruned alone at sparsities
    0.3 ... 0.98 (structured entries: channel ratios 0.1 ... 0.7) and evaluated on the validation split.
    Writes the table (sensitivity.json), curves of loss increase and accuracy drop per layer
    (sensitivity.png) and the ranking (sensitivity.md), and prints the most and least sensitive layers.
    With `sparsity: auto` / `ratio: auto` entries it also prints and writes (allocation.json) the
    per-layer values `prune` would use. The table is saved after every probe: --resume continues.

    \b
    Example:
      sparsekit sensitivity lenet.pt lenet-gradual-magnitude-90 --arch examples.models:lenet_300_100 -o sens
    """
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite contradict each other: pick one")
    _load_native("torch")
    from .analysis import allocation_summary, run_sensitivity
    from .recipe import load_recipe

    rec = load_recipe(find_recipe(recipe), list(overrides))
    res = run_sensitivity(
        model,
        rec,
        out,
        arch=arch,
        data=data,
        trust=trust_model_file,
        trust_code=trust_code,
        resume=resume,
        overwrite=overwrite,
        max_batches=max_batches,
        progress=not no_progress and not as_json,
    )
    table = res["table"]
    ranking = res["ranking"]
    doc = {
        "table": table.model_dump(mode="json"),
        "ranking": [{"layer": n, "score": s} for n, s in ranking],
        "files": res["files"],
        "allocation": res["allocation"],
    }
    lines = [
        f"Wrote {out}/ ({', '.join(Path(p).name for p in res['files'].values())})",
        f"  dense     accuracy {table.dense_accuracy:.4f}, loss {table.dense_loss:.4f} ({table.val_samples:,} samples)",
        "  score     mean validation-loss increase over the probed range, nats per sample",
    ]
    shown = ranking if len(ranking) <= 6 else ranking[:3] + ranking[-3:]
    for i, (name, score) in enumerate(shown):
        label = "most" if i == 0 else "least" if i == len(shown) - 1 else ""
        lines.append(f"  {label:9} {name}: {score:.4f}")
    for row in table.left_out:
        lines.append(f"  left out  {row.name} ({row.type}): {row.reason}")
    if res["allocation"]:
        lines.append(allocation_summary(res["allocation"]))
    _emit(doc, as_json, "\n".join(lines))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@debug_option
@handle_errors
def recipes(as_json: bool, debug: bool) -> None:
    """List the recipes shipped with sparsekit (use the name or the path as RECIPE)."""
    from .recipe_catalog import shipped_recipes

    rows = shipped_recipes()
    _emit(rows, as_json, "\n".join(f"{r['name']:36} {'+'.join(r['methods']):24} {r['description']}" for r in rows))


@main.command()
@click.argument("folder", required=False, type=click.Path(path_type=Path))
@click.option("--schema", is_flag=True, help="Print the JSON schema of report.json instead.")
@debug_option
@handle_errors
def report(folder: Path | None, schema: bool, debug: bool) -> None:
    """Re-render report.md and the plots in FOLDER from its report.json.

    \b
    Example:
      sparsekit report out            # after editing nothing: same report.md, fresh plots
      sparsekit report --schema       # what report.json holds, as a JSON schema
    """
    from .report import load_report, report_schema, write_report

    if schema:
        click.echo(json.dumps(report_schema(), indent=2))
        return
    if folder is None:
        raise click.UsageError("give the output FOLDER of a prune run, or --schema")
    src = folder / "report.json"
    if not src.is_file():
        raise SparsekitError(f"{src}: not found; run `sparsekit prune ... -o {folder}` first")
    from .outputs import RunFolder

    run = RunFolder(folder)
    if not run.has_run():
        raise SparsekitError(f"{folder}: holds no sparsekit run (no .sparsekit folder); nothing re-rendered")
    data = load_report(src)
    run.check_owned()  # report.md and the plots are replaced: they must still be the ones sparsekit wrote
    run.lock()
    try:
        written = write_report(data, folder)
        run.record(written)
    finally:
        run.unlock()
    click.echo(f"Wrote {folder / 'report.md'}")


@main.command()
@click.argument("modules", nargs=-1)
@click.option("--forget", is_flag=True, help="Stop trusting MODULES instead.")
@click.option("--json", "as_json", is_flag=True, help="Print the trusted modules as JSON.")
@debug_option
@handle_errors
def trust(modules: tuple[str, ...], forget: bool, as_json: bool, debug: bool) -> None:
    """List, add (MODULES) or --forget the modules whose code a recipe or checkpoint may name.

    A file may name a model factory or data callable (pkg.module:callable); sparsekit runs it only
    if you name it yourself this run (--arch, --data) or trust its module here or with --trust-code.
    Standard-library and tool modules are never trusted.

    \b
    Examples:
      sparsekit trust                    # list
      sparsekit trust mypkg.nets         # trust a module of yours
      sparsekit trust --forget mypkg.nets
    """
    from .trust import forget_module, store_path, trust_module, trusted_modules

    for module in modules:
        if forget:
            if not forget_module(module):
                click.echo(f"{module}: was not trusted", err=True)
        else:
            trust_module(module)
    mods = trusted_modules()
    text = "\n".join(mods) if mods else f"no trusted modules ({store_path()})"
    _emit({"store": str(store_path()), "modules": mods}, as_json, text)


if __name__ == "__main__":
    main()
