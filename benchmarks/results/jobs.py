"""The suite's jobs (one model family, one seed, in a worker process) and the file measurements.

Kept out of ``__main__`` so that worker processes started with ``spawn`` can import them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from . import arms

LENET = {"recipe": "lenet-gradual-magnitude-90", "shape": [1, 784], "dense_epochs": 5}
CNN = {"shape": [1, 1, 28, 28], "dense_epochs": 4}
CNN_UNSTRUCTURED = "cnn-layer-magnitude-80"
CNN_STRUCTURED = "cnn-structured-50"
# MACs ratios closer than this count as the same (the sparsekit-at-tp-macs arm is then not run).
MACS_MATCH = 0.01


def _row(model: str, kind: str, arm: str, value: float, seed: int, net: Any, split: arms.Split, **extra: Any) -> dict:
    return {
        "model": model,
        "kind": kind,
        "arm": arm,
        "value": value,
        "seed": seed,
        "test_accuracy": arms.accuracy(net, split, "test"),
        "val_accuracy": arms.accuracy(net, split, "val"),
        **extra,
    }


def _export(net: Any, folder: Path | None, name: str, shape: list[int], plain: bool = False) -> str | None:
    """Write ``folder/name.onnx`` with sparsekit's exporter, or with ``plain``, with torch.onnx.export's
    TorchScript exporter as it is (what a user without sparsekit ships: the baseline arms' files)."""
    if folder is None:
        return None
    import torch

    import sparsekit

    path = folder / f"{name}.onnx"
    if plain:
        x = torch.zeros(2, *shape[1:])
        torch.onnx.export(
            net.eval().cpu(), (x,), str(path), dynamo=False, opset_version=18, input_names=["input"],
            output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )  # fmt: skip
    else:
        sparsekit.export_onnx(net, path, shape, exporter="torchscript")
    return str(path)


def lenet_job(seed: int, values: list[float], onnx_dir: Path | None) -> list[dict[str, Any]]:
    """Dense, dense+ft, and torch / sparsekit at each sparsity, for one seed."""
    import torch

    from examples.models import lenet_300_100

    torch.set_num_threads(1)
    shape = LENET["shape"]
    split = arms.mnist_split(seed, shape)
    torch.manual_seed(seed)
    dense = arms.train_dense(lenet_300_100(), split, LENET["dense_epochs"])
    base = arms.shipped(LENET["recipe"], seed)
    names = set(arms.selected_layers(dense, base))
    rows = [
        _row(
            "lenet_300_100",
            "unstructured",
            "dense",
            0.0,
            seed,
            dense,
            split,
            onnx=_export(dense, onnx_dir, "lenet-dense", shape),
        )
    ]
    ft = arms.run_dense_ft(dense, base, split)
    rows.append(_row("lenet_300_100", "unstructured", "dense+ft", 0.0, seed, ft, split))
    for s in values:
        recipe = arms.shipped(LENET["recipe"], seed, [f"pruning.0.sparsity={s}"])
        for arm in ("torch", "sparsekit"):
            start = time.perf_counter()
            net = (
                arms.run_torch_prune(dense, recipe, split, s)
                if arm == "torch"
                else arms.run_sparsekit(dense, recipe, split)
            )
            seconds = time.perf_counter() - start
            rows.append(
                _row(
                    "lenet_300_100",
                    "unstructured",
                    arm,
                    s,
                    seed,
                    net,
                    split,
                    seconds=seconds,
                    sparsity=arms.sparsity_of(net, names),
                    onnx=_export(net, onnx_dir, f"lenet-{arm}-{s:g}", shape, plain=arm == "torch"),
                )
            )
    return rows


def _dense_cnn(seed: int) -> tuple[Any, arms.Split]:
    """The seed's dense small_cnn (the same in both small_cnn jobs: same seed, same data, one thread)."""
    import torch

    from examples.models import small_cnn

    torch.set_num_threads(1)
    split = arms.mnist_split(seed, CNN["shape"])
    torch.manual_seed(seed)
    return arms.train_dense(small_cnn(), split, CNN["dense_epochs"]), split


def cnn_unstructured_job(seed: int, unstructured: list[float]) -> list[dict[str, Any]]:
    """small_cnn: dense+ft, and torch / sparsekit unstructured at each sparsity."""
    dense, split = _dense_cnn(seed)
    rows = []
    base = arms.shipped(CNN_UNSTRUCTURED, seed)
    # Each comparison's "dense + the same fine-tuning" is the dense model given that comparison's recipe
    # (here 4 epochs; the structured job fine-tunes its own, 6 epochs): one row per kind, never shared.
    ft = arms.run_dense_ft(dense, base, split)
    rows.append(_row("small_cnn", "unstructured", "dense+ft", 0.0, seed, ft, split))
    names = set(arms.selected_layers(dense, base))
    for s in unstructured:
        recipe = arms.shipped(CNN_UNSTRUCTURED, seed, [f"pruning.0.sparsity={s}"])
        for arm in ("torch", "sparsekit"):
            start = time.perf_counter()
            net = (
                arms.run_torch_prune(dense, recipe, split, s)
                if arm == "torch"
                else arms.run_sparsekit(dense, recipe, split)
            )
            rows.append(
                _row(
                    "small_cnn",
                    "unstructured",
                    arm,
                    s,
                    seed,
                    net,
                    split,
                    seconds=time.perf_counter() - start,
                    sparsity=arms.sparsity_of(net, names),
                )
            )
    return rows


def cnn_structured_job(seed: int, ratios: list[float], onnx_dir: Path | None) -> list[dict[str, Any]]:
    """small_cnn: dense (exported for the latency comparison), dense + the structured recipe's fine-tuning, and
    Torch-Pruning / sparsekit at each ratio."""
    dense, split = _dense_cnn(seed)
    shape = CNN["shape"]
    dense_macs = arms.macs(dense, shape)
    onnx = _export(dense, onnx_dir, "cnn-dense", shape)
    rows = [_row("small_cnn", "both", "dense", 0.0, seed, dense, split, macs_ratio=1.0, onnx=onnx)]
    ft = arms.run_dense_ft(dense, arms.shipped(CNN_STRUCTURED, seed), split)
    rows.append(_row("small_cnn", "structured", "dense+ft", 0.0, seed, ft, split))
    for r in ratios:
        recipe = arms.shipped(CNN_STRUCTURED, seed, [f"pruning.0.ratio={r}"])
        tp_macs = None
        for arm in ("torch-pruning", "sparsekit", "sparsekit-at-tp-macs"):
            start = time.perf_counter()
            if arm == "torch-pruning":
                net = arms.run_torch_pruning(dense, recipe, split, shape)
                tp_macs = arms.macs(net, shape) / dense_macs
            elif arm == "sparsekit":
                net = arms.run_sparsekit(dense, recipe, split)
            else:
                # Torch-Pruning's rounding can keep far more (or fewer) MACs than sparsekit at the same ratio: the
                # like-for-like comparison is sparsekit's auto allocation to the MACs Torch-Pruning kept.
                at = ["pruning.0.ratio=auto", f"pruning.0.target_macs={tp_macs}"]
                net = arms.run_allocated(dense, arms.shipped(CNN_STRUCTURED, seed, at), split, shape)
            rows.append(
                _row(
                    "small_cnn",
                    "structured",
                    arm,
                    r,
                    seed,
                    net.eval(),
                    split,
                    seconds=time.perf_counter() - start,
                    macs_ratio=arms.macs(net, shape) / dense_macs,
                    channels=arms.channels(net),
                    onnx=_export(net, onnx_dir, f"cnn-{arm}-{r:g}", shape) if arm != "sparsekit-at-tp-macs" else None,
                )
            )
            if arm == "sparsekit" and tp_macs is not None and abs(rows[-1]["macs_ratio"] - tp_macs) <= MACS_MATCH:
                break  # the same MACs already: the third arm would compare like with like again
    return rows


def run_job(job: tuple[str, int, dict[str, Any], str | None]) -> list[dict[str, Any]]:
    name, seed, values, onnx_dir = job
    folder = Path(onnx_dir) if onnx_dir else None
    if name == "lenet":
        return lenet_job(seed, values["lenet"], folder)
    if name == "cnn-unstructured":
        return cnn_unstructured_job(seed, values["cnn_unstructured"])
    return cnn_structured_job(seed, values["cnn_structured"], folder)


def measure_files(rows: list[dict[str, Any]], runs: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Latency of the exported small_cnn arms (interleaved, with an A/A control) and the sizes of the LeNet
    arms against the reference size (mask entropy + values verbatim)."""
    import sparsekit
    from sparsekit.onnx import choose_storage, param_counts, size_report, weight_entropy

    cnn = [r for r in rows if r["model"] == "small_cnn" and r.get("onnx")]
    dense = next(r for r in cnn if r["arm"] == "dense")
    arms_ = [r for r in cnn if r["arm"] != "dense"]
    bench = sparsekit.benchmark(
        [dense["onnx"], *(r["onnx"] for r in arms_)],
        (1, 32),
        threads=1,
        warmup=max(5, runs // 10),
        runs=runs,
        precision=None,  # the tables say how many runs: all of them (under the budget), no early stop
    )
    latency: dict[str, Any] = {"onnxruntime": bench.get("onnxruntime"), "runs": runs, "arms": [], "control": {}}
    # The runs asked for are a ceiling: the 2 s budget per session can stop a slow (or busy) batch size sooner.
    latency["runs_done"] = bench.get("runs_done")
    files = bench["files"]
    for r, f in zip([dense, *arms_], files, strict=True):
        ratio = f.get("ratio_to_first") or {}
        latency["arms"].append(
            {
                "arm": r["arm"],
                "value": r["value"],
                "seed": r["seed"],
                "macs_ratio": r.get("macs_ratio"),
                "channels": r.get("channels"),
                "ratio": {b: ratio[b]["p50"] for b in ratio},
                "latency_ms": f.get("latency_ms"),
                "noise_band": f.get("noise_band"),
            }
        )
    latency["control"] = bench.get("control")
    sizes = []
    lenet = [r for r in rows if r["model"] == "lenet_300_100" and r.get("onnx")]
    dense_l = next(r for r in lenet if r["arm"] == "dense")
    dense_size = size_report(dense_l["onnx"])
    for r in lenet:
        counts = param_counts(r["onnx"])
        s = size_report(r["onnx"], counts["nonzero_params"])
        if r["arm"] == "sparsekit":  # the file `sparsekit prune` ships: storage chosen as export.sparse_storage: auto
            shipped = Path(str(r["onnx"])).with_suffix(".shipped.onnx")
            s = {**s, **choose_storage(r["onnx"], shipped, "auto")}
        # Values verbatim (32 bits per nonzero) plus each tensor's zero mask at its entropy: the reference
        # size (the "entropy bound"), not a true bound: gzip also compresses the fp32 exponents. Kept
        # under its own name: "entropy_bound_bytes" is the values-at-their-entropy bound, as in report.json.
        entropy = weight_entropy(r["onnx"])
        bound = entropy["verbatim_bound_bytes"]
        sizes.append(
            {
                "arm": r["arm"],
                "value": r["value"],
                "seed": r["seed"],
                "params": counts["params"],
                "nonzero_params": counts["nonzero_params"],
                "bytes": s["bytes"],
                "gzip_bytes": s["gzip_bytes"],
                "encoding": s.get("encoding", "dense"),
                "verbatim_bound_bytes": bound,
                "entropy_bound_bytes": entropy["bound_bytes"],
                "gzip_ratio": s["gzip_bytes"] / dense_size["bytes"],
                "bound_ratio": bound / dense_size["bytes"],
                "dense_bytes": dense_size["bytes"],
            }
        )
    return latency, sizes
