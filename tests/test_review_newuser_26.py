"""Found by a new user following the README from an installed wheel, in a scratch folder."""

from __future__ import annotations

import pytest

from sparsekit.errors import SparsekitError
from sparsekit.trust import load_callable

NET = "from torch import nn\n\n\ndef build():\n    return nn.Linear(4, 2)\n"


@pytest.mark.parametrize("layout", ["subfolder", "parent", "package"])
def test_arch_run_from_the_wrong_folder_names_the_folder_holding_the_module(tmp_path, monkeypatch, layout):
    # `sparsekit prune proj/weights.pt ... --arch mynet:build` from proj's parent (or from inside the output folder)
    # said only "run from the folder that contains it": the user had to guess which one. It now names it.
    proj = tmp_path / "proj"
    (proj / "out").mkdir(parents=True)
    if layout == "package":
        (proj / "mynet").mkdir()
        (proj / "mynet" / "__init__.py").write_text(NET)
    else:
        (proj / "mynet.py").write_text(NET)
    monkeypatch.chdir(proj / "out" if layout == "parent" else tmp_path)
    with pytest.raises(SparsekitError) as err:
        load_callable("mynet:build", kind="model", field="arch")
    expected = "../" if layout == "parent" else "proj/"
    assert f"'mynet' is in {expected}: run from that folder" in str(err.value)


def test_arch_of_a_module_nowhere_near_gets_no_folder_hint(tmp_path, monkeypatch):
    # The hint must not invent a place: a module that no nearby folder holds gets the plain message.
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "other.py").write_text(NET)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SparsekitError) as err:
        load_callable("mynet:build", kind="model", field="arch")
    assert "cannot import module 'mynet'" in str(err.value)
    assert "run from that folder" not in str(err.value)
