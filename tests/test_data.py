"""Behaviour of sparsekit.data: built-in sources, splits, seeding, reshaping, npz files, callables."""

from __future__ import annotations

import textwrap
import zipfile

import numpy as np
import pytest
import torch

from sparsekit.data import DataBundle, load_data, sample_shape
from sparsekit.errors import DataError


def _all(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


@pytest.fixture(scope="module")
def mnist() -> DataBundle:
    return load_data("mnist5k", batch_size=64, seed=0)


# --- built-in sources -------------------------------------------------------------------------


def test_digits_shapes_counts_and_normalization():
    bundle = load_data("digits", batch_size=32, val_fraction=0.25, seed=0)
    assert bundle.input_shape == (1, 8, 8)
    assert bundle.num_classes == 10
    assert bundle.source == "digits"
    x_tr, y_tr = _all(bundle.train)
    x_va, y_va = _all(bundle.val)
    assert len(x_tr) + len(x_va) == 1797
    assert len(x_va) == round(1797 * 0.25)
    assert x_tr.shape[1:] == (1, 8, 8)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    x = torch.cat([x_tr, x_va])
    # Default (data.normalize: none): the pixels 0..16 scaled to [0, 1], nothing else.
    assert x.min().item() == 0.0 and x.max().item() == 1.0
    assert torch.equal(torch.unique(x * 16), torch.arange(17, dtype=torch.float32))
    assert set(torch.cat([y_tr, y_va]).tolist()) == set(range(10))
    # standard: the documented whole-set constants give mean 0, std 1, on the same split.
    std = load_data("digits", batch_size=32, val_fraction=0.25, seed=0, normalize="standard")
    xs = torch.cat([_all(std.train)[0], _all(std.val)[0]])
    assert abs(xs.mean().item()) < 0.02 and abs(xs.std().item() - 1.0) < 0.02
    assert torch.allclose(xs, (x - 0.3053) / 0.3760, atol=1e-6)


@pytest.mark.parametrize("source", ["synthetic", "data.npz"])
def test_standard_normalization_is_refused_for_sources_used_as_given(source, tmp_path):
    import numpy as np

    np.savez(tmp_path / "data.npz", x=np.zeros((20, 4), np.float32), y=np.arange(20) % 2)
    src = str(tmp_path / source) if source.endswith(".npz") else source
    with pytest.raises(DataError, match=r"data\.normalize: 'standard' applies to the built-in image sources"):
        load_data(src, input_shape=[1, 4], normalize="standard")


def test_mnist5k_counts_split_sizes_and_normalization(mnist):
    x_tr, y_tr = _all(mnist.train)
    x_va, y_va = _all(mnist.val)
    assert (len(x_tr), len(x_va)) == (4000, 1000)
    assert mnist.input_shape == (1, 28, 28) and mnist.num_classes == 10
    assert x_tr.shape == (4000, 1, 28, 28) and x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    # Default: pixels 0..255 scaled to [0, 1].
    assert x_tr.min().item() == 0.0 and x_tr.max().item() == 1.0
    standard = load_data("mnist5k", batch_size=64, seed=0, normalize="standard")
    xs = _all(standard.train)[0]
    # Background pixels are 0 before standardizing, so they map to exactly -mean/std.
    assert xs.min().item() == pytest.approx(-0.1307 / 0.3081, abs=1e-5)
    assert torch.allclose(xs, (x_tr - 0.1307) / 0.3081, atol=1e-5)
    # 500 images per class overall: a random split keeps every class well represented in val.
    counts = torch.bincount(y_va, minlength=10)
    assert counts.sum() == 1000 and counts.min() > 50


def test_mnist5k_is_shuffled_before_split_and_batching(mnist):
    # The bundled file is sorted by class; unshuffled, the first batches would all be zeros.
    batches = iter(mnist.train)
    seen = torch.cat([next(batches)[1] for _ in range(3)])
    assert set(seen.tolist()) == set(range(10))
    first_val = next(iter(mnist.val))[1]
    assert len(set(first_val.tolist())) >= 5


def test_val_fraction_gives_exact_sizes():
    bundle = load_data("mnist5k", val_fraction=0.1, seed=3)
    assert len(bundle.train.dataset) == 4500
    assert len(bundle.val.dataset) == 500


def test_same_seed_same_batches_different_seed_different():
    a = next(iter(load_data("digits", seed=7).train))
    b = next(iter(load_data("digits", seed=7).train))
    c = next(iter(load_data("digits", seed=8).train))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_train_loader_reshuffles_every_epoch_val_does_not():
    bundle = load_data("digits", seed=0)
    first, second = (next(iter(bundle.train))[0] for _ in range(2))
    assert not torch.equal(first, second)
    assert torch.equal(next(iter(bundle.val))[0], next(iter(bundle.val))[0])


def test_same_seed_same_split():
    va = _all(load_data("digits", seed=1).val)
    vb = _all(load_data("digits", seed=1).val)
    vc = _all(load_data("digits", seed=2).val)
    assert torch.equal(va[0], vb[0])
    assert not torch.equal(va[0], vc[0])


@pytest.mark.parametrize("shape", [[1, 784], [64, 784]])
def test_reshape_to_model_input_shape(shape):
    bundle = load_data("mnist5k", input_shape=shape)
    assert bundle.input_shape == (784,)
    x, _ = next(iter(bundle.val))
    assert x.shape == (64, 784)
    # Flattening must keep each image's pixels in order, not mix samples.
    ref = next(iter(load_data("mnist5k").val))[0]
    assert torch.equal(x, ref.reshape(64, 784))


def test_input_shape_is_batch_first_everywhere():
    # input_shape[1:] is the sample, whatever its length: [1, 8, 8] means 8x8 samples, not 1x8x8 ones.
    assert load_data("digits", input_shape=[1, 1, 8, 8]).input_shape == (1, 8, 8)
    assert load_data("digits", input_shape=[1, 8, 8]).input_shape == (8, 8)
    assert load_data("digits", input_shape=[1, 64]).input_shape == (64,)
    x, _ = next(iter(load_data("digits", input_shape=[1, 8, 8]).train))
    assert x.shape[1:] == (8, 8)


def test_mismatched_input_shape_names_both_shapes():
    with pytest.raises(DataError) as info:
        load_data("digits", input_shape=[1, 784])
    message = str(info.value)
    assert "'digits'" in message
    assert "(1, 8, 8)" in message and "64 values" in message
    assert "[1, 784]" in message
    assert "model.input_shape" in message


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ([1, 784], (784,)),
        ([1, 4, 32], (4, 32)),
        ([1, 28, 28], (28, 28)),
        ([1, 3, 32, 32], (3, 32, 32)),
        ([28, 28], (28,)),
        ([8, 2, 3, 4, 5], (2, 3, 4, 5)),
    ],
)
def test_sample_shape(shape, expected):
    assert sample_shape(shape) == expected


@pytest.mark.parametrize("shape", [[], [1, 0], [1, -3], ["a", 2], [784]])
def test_sample_shape_rejects_bad_shapes(shape):
    with pytest.raises(DataError, match="input_shape"):
        sample_shape(shape)


def test_too_few_classes_for_the_model_is_an_error():
    with pytest.raises(DataError, match="at least 10 outputs"):
        load_data("digits", num_classes=5)
    assert load_data("digits", num_classes=12).num_classes == 12


# --- synthetic --------------------------------------------------------------------------------


def test_synthetic_requires_input_shape():
    with pytest.raises(DataError, match="input_shape"):
        load_data("synthetic")


def test_synthetic_shapes_classes_and_learnable():
    bundle = load_data("synthetic", input_shape=[1, 20], synthetic_samples=400, num_classes=3, seed=0)
    assert bundle.input_shape == (20,)
    assert bundle.num_classes == 3
    x, y = _all(bundle.train)
    assert x.shape == (320, 20) and len(bundle.val.dataset) == 80
    assert set(y.tolist()) == {0, 1, 2}
    # Labels come from a linear teacher, so a least-squares linear fit separates them well.
    onehot = torch.nn.functional.one_hot(y, 3).float()
    w = torch.linalg.lstsq(x, onehot).solution
    assert ((x @ w).argmax(1) == y).float().mean() > 0.8


def test_synthetic_default_ten_classes_and_image_shape():
    bundle = load_data("synthetic", input_shape=[1, 1, 8, 8], seed=1)
    assert bundle.input_shape == (1, 8, 8) and bundle.num_classes == 10
    assert len(bundle.train.dataset) + len(bundle.val.dataset) == 512


def test_synthetic_teacher_is_shared_across_seeds():
    # Different seeds draw different samples of the same task: a sample's label depends only on x.
    a = load_data("synthetic", input_shape=[1, 5], seed=0, num_classes=4)
    b = load_data("synthetic", input_shape=[1, 5], seed=1, num_classes=4)
    xa, ya = _all(a.train)
    xb, yb = _all(b.train)
    assert not torch.equal(xa[:10], xb[:10])
    onehot = torch.nn.functional.one_hot(ya, 4).float()
    w = torch.linalg.lstsq(xa, onehot).solution
    assert ((xb @ w).argmax(1) == yb).float().mean() > 0.8


# --- argument validation ----------------------------------------------------------------------


def test_unknown_source_lists_valid_sources():
    with pytest.raises(DataError) as info:
        load_data("cifar10")
    message = str(info.value)
    assert "'cifar10'" in message
    for name in ("digits", "mnist5k", "synthetic", ".npz", "pkg.module:callable"):
        assert name in message


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"val_fraction": 0.0}, "data.val_fraction"),
        ({"val_fraction": 1.0}, "data.val_fraction"),
        ({"batch_size": 0}, "data.batch_size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(DataError, match=field):
        load_data("digits", **kwargs)


# --- npz files --------------------------------------------------------------------------------


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 3, 4)).astype(np.float64)
    y = np.arange(50) % 4
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    bundle = load_data(str(path), batch_size=8, val_fraction=0.2, seed=0)
    assert bundle.input_shape == (3, 4) and bundle.num_classes == 4
    x_tr, y_tr = _all(bundle.train)
    x_va, y_va = _all(bundle.val)
    assert (len(x_tr), len(x_va)) == (40, 10)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    # Every original (sample, label) pair survives the split exactly once.
    got = sorted(zip(torch.cat([x_tr, x_va]).flatten(1).sum(1).tolist(), torch.cat([y_tr, y_va]).tolist(), strict=True))
    want = sorted(zip(x.astype(np.float32).reshape(50, -1).sum(1).tolist(), y.tolist(), strict=True))
    assert [label for _, label in got] == [label for _, label in want]
    np.testing.assert_allclose([s for s, _ in got], [s for s, _ in want], rtol=1e-5)
    assert load_data(str(path), input_shape=[1, 12]).input_shape == (12,)


def test_npz_accepts_whole_float_labels(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((10, 2), np.float32), y=np.array([0.0, 1.0] * 5))
    bundle = load_data(str(path))
    assert bundle.num_classes == 2
    assert next(iter(bundle.train))[1].dtype == torch.int64


def _write_npz(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": np.zeros((4, 2))}, "lacks array.*y"),
        ({"y": np.zeros(4, int)}, "lacks array.*x"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(3, int)}, "4 samples but y has 3"),
        ({"x": np.zeros((4, 2)), "y": np.array([0.0, 0.5, 1.0, 1.0])}, "integer class labels"),
        ({"x": np.zeros((4, 2)), "y": np.array(["a", "b", "c", "d"])}, "integer class labels"),
        ({"x": np.zeros((4, 2)), "y": np.array([0, -1, 1, 1])}, "negative"),
        ({"x": np.zeros((4, 2)), "y": np.zeros((4, 1), int)}, "1-D"),
        ({"x": np.array(["a", "b"]), "y": np.zeros(2, int)}, "numeric array"),
        ({"x": np.full((4, 2), np.nan), "y": np.zeros(4, int)}, "NaN"),
    ],
)
def test_npz_errors(tmp_path, arrays, match):
    path = _write_npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=match) as info:
        load_data(path)
    assert "bad.npz" in str(info.value)


def test_npz_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found") as info:
        load_data(str(tmp_path / "nope.npz"))
    assert "nope.npz" in str(info.value)


def test_npz_not_an_archive(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"this is not a zip file")
    with pytest.raises(DataError, match="not a valid .npz"):
        load_data(str(path))


def test_npz_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([object()] * 2, dtype=object), y=np.zeros(2, int))
    assert zipfile.is_zipfile(path)
    with pytest.raises(DataError, match="plain numeric arrays"):
        load_data(str(path))


# --- user callables ---------------------------------------------------------------------------


def _write_module(tmp_path, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))


def test_callable_source(tmp_path, monkeypatch):
    _write_module(
        tmp_path,
        "sk_user_data_ok",
        """
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        def loaders():
            g = torch.Generator().manual_seed(0)
            x = torch.randn(40, 3, 5, 5, generator=g)
            train = DataLoader(TensorDataset(x[:30], torch.arange(30) % 3), batch_size=8)
            val_y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
            val = DataLoader(TensorDataset(x[30:], val_y), batch_size=4)
            return train, val
        """,
    )
    monkeypatch.chdir(tmp_path)
    bundle = load_data("sk_user_data_ok:loaders")
    assert bundle.input_shape == (3, 5, 5)
    # Labels 3 and 4 appear only in validation: the full val pass finds them.
    assert bundle.num_classes == 5
    assert bundle.source == "sk_user_data_ok:loaders"
    assert len(bundle.train) == 4
    assert load_data("sk_user_data_ok:loaders", num_classes=7).num_classes == 7
    assert load_data("sk_user_data_ok:loaders", input_shape=[1, 75]).input_shape == (3, 5, 5)
    with pytest.raises(DataError, match="75 values"):
        load_data("sk_user_data_ok:loaders", input_shape=[1, 784])


@pytest.mark.parametrize(
    ("body", "attr", "match"),
    [
        ("def loaders():\n    return 1\n", "loaders", "must return a pair"),
        ("loaders = 3\n", "loaders", "not a callable"),
        ("def loaders():\n    raise RuntimeError('db down')\n", "loaders", "RuntimeError: db down"),
        ("def loaders():\n    return [], []\n", "loaders", "empty"),
        # (train, None) said "the val loader has no len()", not that None came back
        ("import torch\ndef loaders():\n    return [torch.zeros(1)], None\n", "loaders", "returned None as the val"),
        ("def loaders():\n    return None, [1]\n", "loaders", "returned None as the train loader"),
        ("def loaders():\n    return [(1, 2)], [(1, 2)]\n", "loaders", "must yield tensors"),
        (
            "import torch\ndef loaders():\n    b = (torch.zeros(2, 3), torch.zeros(2))\n    return [b], [b]\n",
            "loaders",
            "integer class labels",
        ),
        ("x = 1\n", "missing", "has no 'missing'"),
        ("raise ValueError('broken module')\n", "loaders", "ValueError: broken module"),
    ],
)
def test_bad_callable_sources(tmp_path, monkeypatch, body, attr, match):
    name = f"sk_user_data_bad_{abs(hash((body, attr))) % 10**8}"
    _write_module(tmp_path, name, body)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=match) as info:
        load_data(f"{name}:{attr}")
    assert name in str(info.value)


def test_callable_module_not_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="cannot import module 'sk_no_such_module'"):
        load_data("sk_no_such_module:loaders")


def test_synthetic_samples_times_sample_size_is_bounded():
    with pytest.raises(DataError, match="data.synthetic_samples"):
        load_data("synthetic", input_shape=[1, 3, 512, 512], synthetic_samples=400_000)


def test_a_misspelt_builtin_source_gets_did_you_mean():
    with pytest.raises(DataError, match=r"'digit' is not a known source; did you mean 'digits'\? valid sources"):
        load_data("digit")


def _npz_declaring(path, shape, holds: int = 64, version: int = 1) -> None:
    """An .npz whose x header (.npy format ``version``.0) declares ``shape`` of float32 while the member holds
    ``holds`` bytes of data."""
    import io
    import zipfile

    from numpy.lib import format as npy

    def member(array_shape, data: bytes) -> bytes:
        buf = io.BytesIO()
        npy.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": tuple(array_shape)})
        if version == 1:
            return buf.getvalue() + data
        # 2.0 and 3.0 (UTF-8): a 4-byte header length where 1.0 has 2 bytes; no public writer for 3.0
        header = buf.getvalue()[10:]
        return b"\x93NUMPY" + bytes([version, 0]) + len(header).to_bytes(4, "little") + header + data

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", member(shape, bytes(holds)))
        y = io.BytesIO()
        np.save(y, np.zeros(4, dtype=np.int64))
        z.writestr("y.npy", y.getvalue())


def test_an_npz_declaring_more_than_it_holds_or_than_memory_is_refused_before_it_is_read(tmp_path, monkeypatch):
    # A 1 kB .npz declaring 10e12 floats got "out of memory ... use a smaller model, batch or input" (numpy allocates
    # before it reads), naming no file; a real one of compressed zeros larger than memory would fill it.
    import sparsekit.data as data_mod

    lying = tmp_path / "lying.npz"
    _npz_declaring(lying, (10, 10**12))
    with pytest.raises(DataError, match=r"lying\.npz.*'x' declares shape \[10, 1000000000000\].*holds"):
        load_data(str(lying), batch_size=4)
    for version in (2, 3):  # 3.0 was not checked at all (found by review): numpy tried to allocate 23.8 GiB
        _npz_declaring(lying, (10, 10**12), version=version)
        with pytest.raises(DataError, match=r"lying\.npz.*'x' declares shape \[10, 1000000000000\].*holds"):
            load_data(str(lying), batch_size=4)
    honest = tmp_path / "honest.npz"
    np.savez_compressed(honest, x=np.zeros((64, 32, 32), dtype=np.float32), y=np.zeros(64, dtype=np.int64))
    monkeypatch.setattr(data_mod, "_memory_bytes", lambda: 300_000)  # a machine of 300 kB: 262 kB is more than half
    with pytest.raises(DataError, match=r"honest\.npz.*more than half of this machine's"):
        load_data(str(honest), batch_size=4)
    monkeypatch.setattr(data_mod, "_memory_bytes", lambda: 10**9)
    assert len(load_data(str(honest), batch_size=4, val_fraction=0.25).train) > 0


def test_a_data_path_that_is_no_regular_file_says_what_it_is(tmp_path):
    # A folder, a pipe or /dev/zero named as --data was "not found".
    import os

    (tmp_path / "d.npz").mkdir()
    os.mkfifo(tmp_path / "f.npz")
    (tmp_path / "z.npz").symlink_to("/dev/zero")
    with pytest.raises(DataError, match=r"d\.npz' is a directory"):
        load_data(str(tmp_path / "d.npz"), batch_size=4)
    for name in ("f.npz", "z.npz"):
        with pytest.raises(DataError, match=rf"{name[0]}\.npz' is not a regular file"):
            load_data(str(tmp_path / name), batch_size=4)
