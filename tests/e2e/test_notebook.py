"""The Colab notebook runs top to bottom on CPU, its install cell included (ssm_gd is importable
here, so it installs nothing), and the install cell takes the documented way in each case."""

import json
import pathlib
import subprocess

import matplotlib
import pytest

NOTEBOOK = pathlib.Path(__file__).parents[2] / "notebooks" / "colab_tpu.ipynb"


def _code_cells():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    return [c for c in cells if c["cell_type"] == "code"]


def _install_cell():
    cells = [c for c in _code_cells() if "install" in c["metadata"].get("tags", [])]
    assert len(cells) == 1
    return "".join(cells[0]["source"])


def _run(source, namespace, name="install"):
    exec(compile(source, f"{NOTEBOOK.name}[{name}]", "exec"), namespace)


@pytest.fixture
def no_subprocess(monkeypatch):
    """Fails the test if a cell starts pip or git; records what it tried."""
    calls = []

    def fake_run(args, **kwargs):
        calls.append(list(map(str, args)))
        raise AssertionError(f"the cell ran {args}")

    monkeypatch.setattr(subprocess, "run", fake_run)
    return calls


def test_colab_notebook_runs_on_cpu(tmp_path, monkeypatch, no_subprocess):
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for i, cell in enumerate(_code_cells()):
        _run("".join(cell["source"]), namespace, name=str(i))
    assert no_subprocess == []
    summary = namespace["summary"]
    assert namespace["QUICK"] and summary["val_loss"] < 2 * summary["gd_loss"]
    for name in summary["figures"]:
        assert (tmp_path / "results" / "linear" / name).stat().st_size > 1000


def test_install_cell_does_nothing_when_importable(no_subprocess, capsys):
    namespace = {}
    _run(_install_cell(), namespace)
    _run(_install_cell(), namespace)  # "Run all" twice
    assert no_subprocess == []
    assert capsys.readouterr().out.count("nothing to install") == 2


@pytest.fixture
def not_importable(monkeypatch):
    """``ssm_gd`` looks not installed to the cell (find_spec answers None for it)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ssm_gd" else real(name, *a)
    )
    for name in ("SSM_GD_PACKAGE", "SSM_GD_REPO", "SSM_GD_EXTRAS", "COLAB_TPU_ADDR",
                 "TPU_ACCELERATOR_TYPE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def _recording(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: calls.append(list(map(str, args))))
    return calls


def test_install_cell_without_a_source_says_what_to_set(not_importable, no_subprocess):
    with pytest.raises(RuntimeError, match="SSM_GD_PACKAGE.*SSM_GD_REPO"):
        _run(_install_cell(), {})
    assert no_subprocess == []


def test_install_cell_installs_a_given_package(not_importable, monkeypatch, tmp_path):
    calls = _recording(monkeypatch)
    monkeypatch.setenv("SSM_GD_PACKAGE", str(tmp_path / "ssm_gd-0.1.0-py3-none-any.whl"))
    monkeypatch.setenv("SSM_GD_EXTRAS", "")
    _run(_install_cell(), {})
    assert len(calls) == 1 and calls[0][1:4] == ["-m", "pip", "install"]
    assert calls[0][-1] == str(tmp_path / "ssm_gd-0.1.0-py3-none-any.whl")


def test_install_cell_clones_a_given_repository_once(not_importable, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v5litepod-8")  # a Colab TPU runtime
    calls = _recording(monkeypatch)
    monkeypatch.setenv("SSM_GD_REPO", "https://example.org/ssm-gd.git")
    _run(_install_cell(), {})
    assert calls[0][:2] == ["git", "clone"] and "https://example.org/ssm-gd.git" in calls[0]
    assert calls[1][-1] == f"{tmp_path / 'ssm-gd'}[tpu]"
    (tmp_path / "ssm-gd").mkdir()
    (tmp_path / "ssm-gd" / "pyproject.toml").write_text("")
    _run(_install_cell(), {})  # a second run: the clone is there, only pip runs
    assert [c[0] for c in calls[2:]] != ["git"] and len(calls) == 3


@pytest.mark.parametrize(
    ("tpu", "chips", "nvidia_smi", "extras"),
    [(True, None, False, "[tpu]"), (False, "/dev/accel0", False, "[tpu]"),
     (False, "/dev/vfio/0", False, "[tpu]"), (False, None, True, "[cuda]"),
     (False, None, False, "")],
)  # fmt: skip
def test_install_cell_picks_the_extras_of_the_runtimes_accelerator(
    not_importable, monkeypatch, tmp_path, tpu, chips, nvidia_smi, extras
):
    import shutil

    calls = _recording(monkeypatch)
    if tpu:
        monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v5litepod-8")
    real_glob = pathlib.Path.glob  # this machine's /dev stood in for: only the chips given

    def glob(self, pattern):
        if not str(self).startswith("/dev"):
            return real_glob(self, pattern)
        found = [pathlib.Path(chips)] if chips else []
        return iter([p for p in found if p.parent == self and p.match(pattern)])

    monkeypatch.setattr(pathlib.Path, "glob", glob)
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: (
        ("/usr/bin/nvidia-smi" if nvidia_smi else None) if name == "nvidia-smi"
        else real_which(name, *a, **k)))  # fmt: skip
    monkeypatch.setenv("SSM_GD_PACKAGE", str(tmp_path / "ssm-gd"))
    _run(_install_cell(), {})
    assert calls[0][-1] == f"{tmp_path / 'ssm-gd'}{extras}"
