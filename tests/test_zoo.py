"""Every zoo family (tests/zoo.py) x every method: a clean result or an up-front refusal.

For each pair the Pruner is built from a recipe, the model takes two fake optimizer steps on random
data (loss.backward, opt.step, pruner.step, update_optimizer when the structure changed) and is
finalized. Acceptable outcomes:

- clean: the forward works with the dense model's output shape; no prunable layer lost all its
  outputs or has an all-zero weight; the asked sparsity (exact count) or channel fraction (within
  tolerance) is reached, or the method's report explains the difference per layer; the ONNX export
  (TorchScript exporter, for speed) matches torch and keeps every zero; for ``int8`` the quantized
  file keeps every zero and runs.
- refused up front: building the Pruner raises a :class:`~sparsekit.SparsekitError` (exit 2) that
  names a layer of the model, before any training step.

Anything else (an IndexError or RuntimeError from deep inside, a broken forward, a lost zero) fails.
Pairs that fail today are strict xfails with the failure in one line: fixing one makes its xfail
fail, so the mark must then be removed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekit
from sparsekit.layers import prunable_layers
from sparsekit.onnx import export_onnx, open_session, quantize_int8
from tests.zoo import FAMILIES

STEPS = 2  # fake optimizer steps (steps_per_epoch = 2: one epoch)
BATCH = 8
L1_STRENGTH = 0.02  # proximal shrink of each unit's norm per step
L1_THRESHOLD = 0.15  # units whose norm ends below this die (about a fifth, see _spread_units)


def _pruning(method: str, model: nn.Module) -> list[dict[str, Any]]:
    layers: dict[str, Any] = {}  # the default selection: every prunable kind (ConvTranspose included)
    if method == "magnitude_global_0.9":
        return [{"method": "magnitude", "sparsity": 0.9, "scope": "global", "schedule": "oneshot", "layers": layers}]
    if method == "structured_0.5":
        return [{"method": "structured", "ratio": 0.5, "importance": "l2", "schedule": "oneshot", "layers": layers}]
    if method == "l1_groups":
        l1 = {"method": "l1", "mode": "proximal", "strength": L1_STRENGTH, "threshold": L1_THRESHOLD}
        kinds = {type(m).__name__ for m in prunable_layers(model).values()}
        convs = sorted(kinds - {"Linear"})
        entries = [{**l1, "group": "row", "layers": {"types": ["Linear"]}}]
        if convs:
            entries.append({**l1, "group": "channel", "layers": {"types": convs}})
        return entries
    if method == "int8":  # every layer gets zeros for the quantizer to keep
        return [{"method": "magnitude", "sparsity": 0.5, "scope": "layer", "schedule": "oneshot", "layers": layers}]
    raise AssertionError(method)


METHODS = ["magnitude_global_0.9", "structured_0.5", "l1_groups", "int8"]

# (family, method) -> what fails today, in one line. Strict: a fix turns the xfail into a failure.
XFAIL: dict[tuple[str, str], str] = {}


def _cases() -> list[Any]:
    cases = []
    for family in FAMILIES:
        for method in METHODS:
            reason = XFAIL.get((family, method))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            cases.append(pytest.param(family, method, marks=marks, id=f"{family}-{method}"))
    return cases


@torch.no_grad()
def _spread_units(model: nn.Module, gen: torch.Generator) -> None:
    """Scale each output unit's weights by a random factor in [0.05, 1], as training leaves units of
    unequal norm (fresh initializations give every unit nearly the same norm), and the gamma of a BatchNorm
    right after the layer by the same factors (l1's groups hold it)."""
    layers = {id(m) for m in prunable_layers(model).values()}
    scale = None
    for module in model.modules():  # a BatchNorm after a layer: its gamma is in the units' groups (l1)
        if id(module) in layers:
            w = module.weight
            scale = torch.empty(w.shape[0]).uniform_(0.05, 1.0, generator=gen)
            w.mul_(scale.view(-1, *([1] * (w.dim() - 1))))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine and scale is not None:
            module.weight.mul_(scale if scale.numel() == module.num_features else 1.0)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.3, 0.3, generator=gen)
            module.running_var.uniform_(0.5, 1.5, generator=gen)


def _out_units(module: nn.Module) -> int:
    return int(module.out_features if isinstance(module, nn.Linear) else module.out_channels)


def _explained(report: dict[str, Any]) -> bool:
    return any((aim or {}).get("reason") for aim in (report.get("per_layer") or {}).values())


@pytest.mark.parametrize(("family", "method"), _cases())
def test_zoo(family: str, method: str, tmp_path) -> None:
    factory, shape = FAMILIES[family]
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = factory()
    _spread_units(model, gen)
    x_check = torch.randn([3, *shape[1:]], generator=gen)
    dense_out = model.eval()(x_check).shape
    dense_params = sum(p.numel() for p in model.parameters())
    model.train()
    recipe = sparsekit.Recipe(
        **{"version": 1, "model": {"input_shape": shape}, "finetune": {"epochs": 1}, "pruning": _pruning(method, model)}
    )

    try:
        pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=STEPS, context={"input_shape": shape})
    except sparsekit.SparsekitError as err:  # the other acceptable outcome: refused before training
        names = [n for n, _ in model.named_modules() if n]
        assert err.exit_code == 2
        assert any(f"'{n}'" in str(err) for n in names), f"the refusal names no layer: {err}"
        return

    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(STEPS):
        x = torch.randn([BATCH, *shape[1:]], generator=gen)
        y = torch.randint(0, dense_out[-1], (BATCH,), generator=gen)
        opt.zero_grad()
        (F.cross_entropy(model(x), y) + pruner.penalty()).backward()
        opt.step()
        pruner.step()
        if pruner.structure_changed:
            opt = pruner.update_optimizer(opt)
    final = pruner.finalize().eval()

    with torch.no_grad():
        assert final(x_check).shape == dense_out
    empty = [n for n, m in prunable_layers(final).items() if _out_units(m) == 0 or not bool(m.weight.detach().any())]
    assert not empty, f"layers with no output units or only zero weights: {empty}"

    report = pruner.methods[0].report()
    if method == "magnitude_global_0.9":
        chosen = [final.get_submodule(n).weight.detach() for n in pruner.methods[0].layers]
        n = sum(w.numel() for w in chosen)
        zeros = sum(int((w == 0).sum()) for w in chosen)
        assert zeros == round(0.9 * n) or _explained(report), (zeros, round(0.9 * n), report)
    elif method == "structured_0.5":
        channels = report["channels"].values()
        achieved = 1 - sum(now for _, now in channels) / sum(before for before, _ in channels)
        assert abs(achieved - 0.5) <= 0.1 or _explained(report), (achieved, report)
        assert sum(p.numel() for p in final.parameters()) < dense_params
    elif method == "l1_groups":
        dead = [m.report().get("dead_units") or {} for m in pruner.methods]
        assert sum(d.get("found", 0) for d in dead) > 0, "the l1 settings killed no unit: the case tests nothing"

    info = export_onnx(final, tmp_path / "m.onnx", shape, exporter="torchscript")
    assert info["parity"]["ok"], info["parity"]
    assert info["zeros"]["zeros_ok"], [r for r in info["zeros"]["layers"] if not r["ok"]]
    if method == "int8":
        rng = np.random.default_rng(0)
        calibration = [rng.standard_normal([BATCH, *shape[1:]]).astype(np.float32) for _ in range(4)]
        q = quantize_int8(tmp_path / "m.onnx", tmp_path / "m.int8.onnx", calibration=calibration)
        assert q["zeros"]["zeros_ok"], [r for r in q["zeros"]["layers"] if not r["ok"]]
        session = open_session(tmp_path / "m.int8.onnx", threads=1)
        name = session.get_inputs()[0].name
        (out,) = session.run(None, {name: x_check.numpy()})
        assert out.shape == tuple(dense_out) and np.isfinite(out).all()


def test_int8_falls_back_to_per_tensor_scales_where_per_channel_fails(tmp_path):
    """onnxruntime's per-channel pass fails on a weight read along two axes (tied encoder/decoder)."""
    factory, shape = FAMILIES["tied_ae"]
    torch.manual_seed(0)
    model = factory().eval()
    export_onnx(model, tmp_path / "m.onnx", shape, exporter="torchscript")
    calibration = [np.random.default_rng(0).standard_normal([BATCH, *shape[1:]]).astype(np.float32)]
    q = quantize_int8(tmp_path / "m.onnx", tmp_path / "m.int8.onnx", calibration=calibration)
    assert q["per_channel"] is False and "per-channel quantization failed" in q["fallback"]
    assert q["zeros"]["zeros_ok"]
    # An ordinary model keeps per-channel scales and reports no fallback.
    factory, shape = FAMILIES["vgg"]
    export_onnx(factory().eval(), tmp_path / "v.onnx", shape, exporter="torchscript")
    calibration = [np.random.default_rng(0).standard_normal([BATCH, *shape[1:]]).astype(np.float32)]
    q = quantize_int8(tmp_path / "v.onnx", tmp_path / "v.int8.onnx", calibration=calibration)
    assert q["per_channel"] is True and q["fallback"] is None
