"""The notebooks in notebooks/: executed end to end (random weights, generated images), kept output-free."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

nbformat = pytest.importorskip("nbformat", reason="notebook tests need the dev extras (nbformat, nbclient, ipykernel)")
nbclient = pytest.importorskip("nbclient", reason="notebook tests need the dev extras (nbformat, nbclient, ipykernel)")
pytest.importorskip("ipykernel", reason="notebook tests need the dev extras (nbformat, nbclient, ipykernel)")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "lostreg-test-python"
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A kernelspec for *this* interpreter, found first via JUPYTER_PATH.

    The notebooks name the usual "python3" kernel, which a developer's own Jupyter set-up may map to
    another environment; the tests must run lostreg from the environment under test.
    """
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "lostreg tests", "language": "python",
    }))
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PATH", str(root))
    yield KERNEL
    mp.undo()


def parameters_cell(notebook: "nbformat.NotebookNode") -> "nbformat.NotebookNode":
    cells = [c for c in notebook.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    first_code = next(c for c in notebook.cells if c.cell_type == "code")
    assert cells[0] is first_code, "the parameters cell is the first code cell"
    return cells[0]


def execute(name: str, parameters: dict[str, object], kernel: str, cwd: Path) -> "nbformat.NotebookNode":
    """Run a notebook with its parameters cell replaced (papermill-style, values as Python literals)."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    cell = parameters_cell(notebook)
    defined = {line.split("=", 1)[0].strip() for line in cell.source.splitlines() if "=" in line and not line.startswith("#")}
    assert set(parameters) <= defined, f"unknown parameters {set(parameters) - defined}"
    cell.source += "\n# injected by tests/test_notebooks.py\n" + "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    client = nbclient.NotebookClient(notebook, timeout=TIMEOUT_S, kernel_name=kernel,
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return notebook


def _outputs_text(notebook: "nbformat.NotebookNode") -> str:
    parts = []
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") if out.get("output_type") == "stream" else json.dumps(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def _has_image(notebook: "nbformat.NotebookNode") -> bool:
    return any("image/png" in out.get("data", {}) for cell in notebook.cells for out in cell.get("outputs", []))


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 60)
def test_01_discover_runs(kernel_name: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = (170 + rng.normal(0, 8, (84, 112, 3))).clip(0, 255).astype(np.uint8)
    pixels[20:60, 30:80] = (40, 60, 30)
    image = tmp_path / "scene.png"
    Image.fromarray(pixels).save(image)
    notebook = execute("01_discover.ipynb", {"WEIGHTS": "random", "IMAGE": str(image), "MAX_SIZE": None,
                                             "DEVICE": "cpu"}, kernel_name, tmp_path)
    text = _outputs_text(notebook)
    for name in ("dino_vits16", "dinov2_vits14", "dinov2_vits14_reg"):
        assert name in text
    assert "RANDOM weights" in text and _has_image(notebook)


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 60)
def test_02_registers_gap_runs(kernel_name: str, tmp_path: Path) -> None:
    notebook = execute("02_registers_gap.ipynb", {"WEIGHTS": "random", "NUM_IMAGES": 6, "WORK_DIR": str(tmp_path / "work")},
                       kernel_name, tmp_path)
    text = _outputs_text(notebook)
    assert "3 runs" in text and "CorLoc" in text and "registers gap voc07 dinov2_vits14_reg" in text
    assert _has_image(notebook)
    assert sorted(p.name for p in (tmp_path / "work" / "runs").iterdir()) == ["dino", "dinov2", "dinov2_reg"]


@pytest.mark.parametrize("name", ["01_discover.ipynb", "02_registers_gap.ipynb"])
def test_committed_notebooks_are_stripped(name: str) -> None:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    parameters_cell(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: a code cell has outputs"
            assert cell.execution_count is None, f"{name}: a code cell has an execution count"
        assert "execution" not in cell.get("metadata", {}), f"{name}: execution timing metadata"
    assert "widgets" not in notebook.metadata
