"""Mends from the twenty-first architecture review: attention encoders on token ids, DenseNet concatenation,
GroupNorm/InstanceNorm, transposed-conv decoders, grouped and dilated convs, Conv3d, PReLU, shared layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekit


def _structured(shape: list[int], **extra: object) -> sparsekit.Recipe:
    spec = {"method": "structured", "ratio": 0.5, "round_to": None, "schedule": "oneshot", **extra}
    return sparsekit.Recipe(**{"model": {"input_shape": shape}, "finetune": {"epochs": 0}, "pruning": [spec]})


class TokenAttention(nn.Module):
    """Token ids -> embedding -> 2-head self-attention and an MLP on a residual stream of 16 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(32, 16)
        self.att = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc, self.fc2, self.head = nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        h = h + self.att(h, h, h, need_weights=False)[0]
        h = h + self.fc2(F.relu(self.fc(h)))
        return self.head(h.mean(1))


def test_attention_embedding_keeps_a_multiple_of_its_heads_each_head_its_share(one_thread):
    # 16 channels at ratio 0.3 kept 11, which no 2 heads divide: the removal failed and the error blamed a
    # view/reshape and told to ignore fc2. Removal now goes head by head, as for a GroupNorm's groups.
    torch.manual_seed(0)
    model = TokenAttention()
    emb = model.emb.weight.detach().clone()
    pruner = sparsekit.Pruner(model, _structured([1, 6], ratio=0.3), steps_per_epoch=1)
    pruner.step()
    model = pruner.finalize()
    assert model.att.embed_dim == 12 and model.att.head_dim == 6
    # the embedding channels kept, found by their columns: each head (channels 0-7, 8-15) keeps 6 of its own
    kept = [int((emb - col[:, None]).abs().sum(0).argmin()) for col in model.emb.weight.detach().T]
    assert sum(k < 8 for k in kept) == 6, kept


def test_the_reason_a_residual_stream_kept_a_multiple_of_its_heads_names_them(one_thread):
    # The reason said "groups of a grouped conv or GroupNorm", of which this model has none.
    torch.manual_seed(0)
    model = TokenAttention()
    pruner = sparsekit.Pruner(model, _structured([1, 6], ratio=0.2), steps_per_epoch=1)
    pruner.step()
    reasons = {n: r["reason"] for n, r in pruner.methods[0].report()["per_layer"].items() if r["reason"]}
    assert reasons and all("attention's heads" in r for r in reasons.values()), reasons
    assert model(torch.randint(0, 32, (3, 6))).shape == (3, 4)


def _ffn_only(model: TokenAttention) -> int:
    return 6 * (16 * 32 + 32 * 16) + 16 * 4


def test_attention_input_projection_counts_its_macs_as_the_onnx_file_does(one_thread):
    # The packed q/k/v projection (a MatMul of 48x16 in the ONNX file, which `inspect FILE.onnx` counts) was
    # left out of the .pt's MACs: 7,744 for the checkpoint against 12,352 for its own ONNX export.
    from sparsekit.stats import model_stats

    torch.manual_seed(0)
    model = TokenAttention()
    in_proj, out_proj = 3 * 6 * 16 * 16, 6 * 16 * 16
    assert model_stats(model, [1, 6])["macs"] == in_proj + out_proj + _ffn_only(model)
    with torch.no_grad():
        model.att.in_proj_weight[:24] = 0  # half its weights zero: half its MACs are on zeros
    assert model_stats(model, [1, 6])["effective_macs"] == in_proj // 2 + out_proj + _ffn_only(model)


def test_a_macs_plan_counts_what_removing_the_embedding_saves_in_attention(one_thread):
    # ratio: auto's planner knew neither the projection's MACs nor that out_proj (which the trace never reaches)
    # shrinks with the residual stream: it predicted too little saved and asked more of the other layers.
    from sparsekit.sensitivity import _layer_macs, _StructuredPlan

    torch.manual_seed(0)
    model = TokenAttention()
    recipe = _structured([1, 6], ratio=0.5, ignore=["head"])
    dense = _layer_macs(model, [1, 6])
    plan = _StructuredPlan(model, recipe.pruning[0], 0, [1, 6], dense)
    residual = plan.owner.get("att.out_proj", "fc2")
    pruner = sparsekit.Pruner(model, recipe.model_copy(deep=True), steps_per_epoch=1)
    pruner.step()
    model = pruner.finalize()
    assert model.att.embed_dim == 8 and model.fc.out_features == 16
    after = _layer_macs(model, [1, 6])
    predicted = plan.saved({residual: 0.5, "fc": 0.5})
    assert predicted == sum(dense.values()) - sum(after.values())


class PReLUNet(nn.Module):
    """Convs each followed by a PReLU with a slope per channel (and one shared slope)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(1, 8, 3), nn.PReLU(8, init=0.3)
        self.c2, self.a2 = nn.Conv2d(8, 8, 3), nn.PReLU()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.a2(self.c2(self.a1(self.c1(x)))).mean((2, 3)))


def test_zeroed_units_before_a_prelu_are_removed_with_their_slopes(one_thread):
    # A PReLU's per-channel slopes were "per-unit parameters the removal cannot adjust": zeroed units stayed, and
    # an l1 target over such layers was refused up front. torch-pruning cuts the slopes; the constant a dead unit
    # sends through its slope is folded into the next layer's bias like any other.
    from sparsekit.surgery import remove_dead_units

    torch.manual_seed(0)
    model = PReLUNet().eval()
    with torch.no_grad():
        model.c1.weight[[1, 4, 6]] = 0
        model.c1.bias[[1, 4, 6]] = torch.tensor([-0.5, 0.2, -1.0])  # constants through the slope, both sides
        model.a1.weight[[1, 6]] = torch.tensor([0.7, 0.1])
        model.c2.weight[[0, 3]] = 0
    x = torch.randn(4, 1, 8, 8)
    before = model(x)
    pruned, _ = remove_dead_units(model, [1, 1, 8, 8], ignore=["head"])
    assert (pruned.c1.out_channels, pruned.a1.num_parameters, pruned.c2.out_channels) == (5, 5, 6)
    torch.testing.assert_close(pruned(x), before, atol=1e-5, rtol=1e-5)
    spec = {"method": "l1", "strength": 0.1, "group": "channel", "target": 0.5, "remove_dead": True}
    spec["schedule"] = {"start_epoch": 0, "end_epoch": 1}
    recipe = {"model": {"input_shape": [1, 1, 8, 8]}, "finetune": {"epochs": 1}, "pruning": [spec]}
    report = sparsekit.Pruner(PReLUNet(), recipe, steps_per_epoch=1).methods[0].report()
    assert "c1" not in report.get("target_left_out", {}) and not report.get("cannot_remove"), report


class TrackedInstanceNorm(nn.Module):
    """InstanceNorms that track running statistics (affine and not), over 2-D and flattened 1-D channels."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(1, 8, 3, padding=1), nn.InstanceNorm2d(8, affine=True, track_running_stats=True)
        self.c2, self.n2 = nn.Conv2d(8, 8, 3, padding=1), nn.InstanceNorm1d(8, track_running_stats=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c2(F.relu(self.n1(self.c1(x)))).flatten(2)
        return self.head(F.relu(self.n2(h)).mean(2))


def test_structured_removal_cuts_an_instance_norms_running_statistics(one_thread):
    # torch-pruning cut the InstanceNorms' weight and bias but not their running statistics: the eval-mode forward
    # after the removal failed, and the error blamed a view/reshape and told to ignore c2.
    from sparsekit.surgery import replay_history

    torch.manual_seed(0)
    model = TrackedInstanceNorm()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 1, 8, 8))
    means = model.n1.running_mean.clone()
    pruner = sparsekit.Pruner(model.eval(), _structured([1, 1, 8, 8]), steps_per_epoch=1)
    pruner.step()
    pruned = pruner.finalize().eval()
    assert pruned.n1.running_mean.shape == pruned.n2.running_var.shape == (4,)
    kept = [int((means - m).abs().argmin()) for m in pruned.n1.running_mean]
    assert kept == sorted(kept) and len(set(kept)) == 4  # the kept channels' own statistics, in order
    assert pruned(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    rebuilt = replay_history(TrackedInstanceNorm(), pruner.pruning_history, [1, 1, 8, 8])
    rebuilt.load_state_dict(pruned.state_dict())  # a checkpoint's rebuild fits the saved statistics


def test_zeroed_units_through_a_tracking_instance_norm_are_removed(one_thread):
    # The running statistics torch-pruning did not cut (cut now by the removal itself) kept every zeroed unit
    # before an InstanceNorm that tracks them, and group l1's report said so.
    from sparsekit.surgery import remove_dead_units

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.InstanceNorm2d(8, affine=True, track_running_stats=True), nn.ReLU(),
        nn.Conv2d(8, 6, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    )  # fmt: skip
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 1, 8, 8))
        model[0].weight[[2, 5]] = 0
    model.eval()
    x = torch.randn(4, 1, 8, 8)
    before = model(x)
    pruned, _ = remove_dead_units(model, [1, 1, 8, 8], ignore=["6"])
    assert pruned[0].out_channels == 6 and pruned[1].running_mean.shape == (6,)
    torch.testing.assert_close(pruned(x), before, atol=1e-5, rtol=1e-5)
    spec = {"method": "l1", "strength": 0.1, "group": "channel", "remove_dead": True}
    recipe = {"model": {"input_shape": [1, 1, 8, 8]}, "finetune": {"epochs": 1}, "pruning": [spec]}
    report = sparsekit.Pruner(model, recipe, steps_per_epoch=1).methods[0].report()
    assert "0" not in report.get("cannot_remove", {}), report


class CrossAttention(nn.Module):
    """Queries of 16 channels attend to keys/values of 12 (kdim/vdim)."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.kv = nn.Linear(8, 16), nn.Linear(8, 12)
        self.att = nn.MultiheadAttention(16, 4, kdim=12, vdim=12, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kv = self.kv(x[:, 4:])
        return self.head(self.att(self.q(x[:, :4]), kv, kv)[0].mean(1))


def test_attention_with_its_own_key_width_is_named_as_why_a_removal_breaks(one_thread):
    # The error said the channels "pass through split/chunk, view/reshape (a shape written into the forward code
    # cannot follow a channel removal)": this model has neither; the attention's kdim/vdim is what breaks.
    torch.manual_seed(0)
    pruner = sparsekit.Pruner(CrossAttention(), _structured([1, 10, 8]), steps_per_epoch=1)
    with pytest.raises(sparsekit.TargetError) as err:
        pruner.step()
    message = str(err.value)
    assert "'att' is an nn.MultiheadAttention" in message and "kdim 12, vdim 12, embed_dim 16" in message, message
    assert "view/reshape" not in message.split("forward pass")[1].split(")", 1)[1], message


def test_a_plain_instancenorm_behind_an_add_is_named_an_instancenorm():
    # l1's reason named a non-affine InstanceNorm that tracks running statistics "a BatchNorm" (found by review 21).
    class AddThenInstanceNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(1, 8, 3, padding=1)
            self.norm = nn.InstanceNorm2d(8, track_running_stats=True)
            self.out = nn.Conv2d(8, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.norm(self.a(x) + self.b(x))))

    entry = {"method": "l1", "strength": 1e-3, "group": "channel", "remove_dead": True, "layers": {"types": ["Conv2d"]}}
    r = sparsekit.Recipe(model={"input_shape": [1, 1, 8, 8]}, finetune={"epochs": 1}, pruning=[entry])
    reasons = sparsekit.Pruner(AddThenInstanceNorm(), r, steps_per_epoch=4).methods[0].report()["cannot_remove"]
    assert "norm, an InstanceNorm without affine parameters" in reasons["a"]
