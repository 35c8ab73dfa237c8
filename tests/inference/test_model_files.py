"""Bad model files: missing, a folder, empty, truncated, not PyTorch, not ours, another
architecture, a newer format, pickled code. Each is refused with one line naming the file and the
problem, by ``CTEnhancer.from_file`` (a ``ModelFileError``) and by every command that takes a
model (``ctv2v enhance``, ``ctv2v export``, ``ctv2v evaluate``: exit code 2, no traceback); a file
whose unpickling would run code is refused and the code never runs. The package never loads with
``weights_only=False`` (a scan of the sources)."""

from __future__ import annotations

import ast
import os
import pickle
from pathlib import Path

import pytest
import torch

from bundle.cli import main
from bundle.engines.checkpoints import load_checkpoint
from bundle.evaluation.redcnn import load_redcnn
from bundle.inference import CTEnhancer
from bundle.networks import ConditionalUNet3D, VideoVAE
from bundle.utils.model_files import ModelFileError, ModelFileNotFoundError

REPO = Path(__file__).resolve().parents[2]
VAE = {"channels": (8, 16, 16, 16), "norm_num_groups": 4, "num_res_blocks": 1, "num_mid_blocks": 1}
UNET = {"channel_mult": (1, 2, 2, 2), "num_heads": 2, "norm_num_groups": 4, "time_embed_dim": 32, "num_res_blocks": 1}


def tiny_enhancer(model_channels: int = 16) -> CTEnhancer:
    torch.manual_seed(0)
    return CTEnhancer(VideoVAE(**VAE), ConditionalUNet3D(model_channels=model_channels, **UNET))


class RunsCode:
    """Unpickling this calls ``os.system`` (what a malicious model file does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def good_model(model_dir) -> Path:
    path = model_dir / "model.pt"
    tiny_enhancer().save(path)
    return path


MARKER = "pwned_marker"


def make_bad(kind: str, folder: Path, good: Path) -> tuple[Path, str]:
    """(file, the words its one-line error must contain)."""
    path = folder / f"{kind}.pt"
    if kind == "missing":
        return path, "not found"
    if kind == "folder":
        path.mkdir(exist_ok=True)
        return path, "is a folder"
    if kind == "empty":
        path.write_bytes(b"")
        return path, "is empty"
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        return path, "truncated or corrupt PyTorch file"
    if kind == "text":
        path.write_text("this is a README, not a model\n" * 20)
        return path, "not a PyTorch file"
    if kind == "foreign_state_dict":
        torch.save({"conv.weight": torch.zeros(3, 3)}, path)
        return path, "not a ctv2v enhancer model (it holds a dict of conv.weight"
    if kind == "redcnn_file":
        torch.save({"format": "ctv2v-redcnn", "format_version": 1, "config": {}, "state_dict": {}}, path)
        return path, "not a ctv2v enhancer model (it is a 'ctv2v-redcnn' file"
    if kind == "checkpoint":
        torch.save({"unet": {}, "vae": {}, "optimizer": {}, "trainer": {"iteration": 3}}, path)
        return path, "looks like a training checkpoint"
    if kind == "other_architecture":  # claims the 16-channel U-Net, holds an 8-channel one's weights
        state = tiny_enhancer(model_channels=8).state_dict()
        state["_extra_state"]["unet"] = dict(tiny_enhancer().unet.config)
        torch.save(state, path)
        return path, "weights do not fit the architecture it declares (size mismatch for unet."
    if kind == "unknown_architecture":  # a newer version's hyper-parameter this code does not know
        state = tiny_enhancer().state_dict()
        state["_extra_state"]["unet"]["new_option"] = 3
        torch.save(state, path)
        return path, "stored architecture cannot be built (TypeError"
    if kind == "newer_format":
        state = tiny_enhancer().state_dict()
        state["_extra_state"]["format_version"] = 99
        torch.save(state, path)
        return path, "format version 99 is newer"
    if kind == "code_in_torch_file":
        torch.save({"weights": torch.zeros(2), "x": RunsCode(folder / MARKER)}, path)
        return path, "refused: it holds pickled Python objects (posix.system) that would run code"
    if kind == "code_in_plain_pickle":
        path.write_bytes(pickle.dumps(RunsCode(folder / MARKER)))
        return path, "refused: it holds pickled Python objects"
    raise AssertionError(kind)


KINDS = ["missing", "folder", "empty", "truncated", "text", "foreign_state_dict", "redcnn_file", "checkpoint",
         "other_architecture", "unknown_architecture", "newer_format", "code_in_torch_file", "code_in_plain_pickle"]


@pytest.fixture(params=KINDS)
def bad_model(request, tmp_path, good_model):
    path, expected = make_bad(request.param, tmp_path, good_model)
    yield request.param, path, expected
    assert not (tmp_path / MARKER).exists(), "unpickling ran the file's code"


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text and "weights_only=False" not in text, text
    return lines[0]


def test_from_file_refuses_with_one_line(bad_model):
    kind, path, expected = bad_model
    with pytest.raises(ModelFileError) as info:
        CTEnhancer.from_file(path)
    message = one_line(str(info.value))
    assert message.startswith(f"model file {path}: ") and expected in message, message
    if kind == "missing":
        assert isinstance(info.value, (ModelFileNotFoundError, FileNotFoundError))


def test_enhance_command_refuses_with_one_line(bad_model, tmp_path, capsys):
    _, path, expected = bad_model
    (tmp_path / "input").mkdir()
    code = main(["enhance", str(tmp_path / "input"), str(tmp_path / "out"), "--model", str(path),
                 "--device", "cpu", "--no-progress"])
    err = one_line(capsys.readouterr().err)
    assert code == 2 and err.startswith("error: model file ") and str(path) in err and expected in err, err
    assert not (tmp_path / "out").exists()


def test_export_command_refuses_with_one_line(bad_model, tmp_path, capsys):
    _, path, expected = bad_model
    assert main(["export", str(path), str(tmp_path / "exported")]) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith("error: model file ") and str(path) in err and expected in err, err
    assert not (tmp_path / "exported").exists()


@pytest.mark.parametrize("kind", ["missing", "truncated", "foreign_state_dict", "other_architecture",
                                  "code_in_torch_file"])
def test_evaluate_command_refuses_with_one_line(kind, tmp_path, good_model, tiny_dataset, capsys):
    path, expected = make_bad(kind, tmp_path, good_model)
    code = main(["evaluate", "--datalist", str(tiny_dataset / "datalist.json"), "--model", str(path),
                 "--output", str(tmp_path / "report"), "--set", "device=cpu"])
    err = one_line(capsys.readouterr().err)
    assert code == 2 and err.startswith("ctv2v evaluate: error: model file ") and expected in err, err
    assert not (tmp_path / MARKER).exists()
    assert not (tmp_path / "report" / "report.md").exists()


def test_inference_config_refuses_with_the_line_in_the_chain(bad_model, monkeypatch):
    """``python -m monai.bundle run inference``: the config parser wraps the error; the line is in it."""
    from monai.bundle import ConfigParser

    from bundle.utils.validation import user_error

    _, path, expected = bad_model
    monkeypatch.chdir(REPO)
    parser = ConfigParser()
    parser.read_config(str(REPO / "configs" / "inference.yaml"))
    parser.update({"model_path": str(path), "device": "$torch.device('cpu')"})
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("network_def")
    cause = user_error(info.value)
    assert isinstance(cause, ModelFileError) and expected in str(cause)


@pytest.mark.parametrize("kind", ["truncated", "text", "foreign_state_dict", "code_in_torch_file"])
def test_redcnn_and_checkpoint_loaders_refuse_with_one_line(kind, tmp_path, good_model):
    path, expected = make_bad(kind, tmp_path, good_model)
    with pytest.raises(ModelFileError) as info:
        load_redcnn(path)
    message = one_line(str(info.value))
    assert message.startswith(f"RED-CNN baseline file {path}: ")
    if kind == "foreign_state_dict":
        assert "not a RED-CNN baseline (it holds a dict of conv.weight" in message
    else:
        assert expected in message
    if kind != "foreign_state_dict":  # any dict is a checkpoint's shape; its keys are the trainer's to check
        with pytest.raises(ModelFileError, match=f"^checkpoint {path}: "):
            load_checkpoint(path)
    assert not (tmp_path / MARKER).exists()


def test_a_good_model_still_loads(good_model):
    enhancer = CTEnhancer.from_file(good_model, num_inference_steps=3)
    assert enhancer.num_inference_steps == 3 and not enhancer.training


# --- nothing in the package loads pickles with code ------------------------------------------------
def _unsafe_loads(path: Path) -> list[str]:
    """``file:line: what`` for each ``weights_only=False``, ``torch.load`` without
    ``weights_only=True`` and ``pickle.load(s)`` call in ``path``."""
    text = path.read_text()
    found = [f"{path}:{n}: weights_only=False" for n, line in enumerate(text.splitlines(), 1)
             if "weights_only=False" in line.replace(" ", "")]
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        if name == "torch.load":
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in node.keywords)
            if not safe:
                found.append(f"{path}:{node.lineno}: torch.load without weights_only=True")
        if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "dill.loads"):
            found.append(f"{path}:{node.lineno}: {name}")
    return found


def test_no_source_file_loads_pickled_code():
    files = [p for folder in ("bundle", "scripts", "deploy") for p in sorted((REPO / folder).rglob("*.py"))]
    assert len(files) > 50
    problems = [problem for path in files for problem in _unsafe_loads(path)]
    assert not problems, "\n".join(problems)


def test_the_scan_finds_what_it_looks_for(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import torch\nimport pickle\na = torch.load(p)\nb = torch.load(p, weights_only = False)\n"
                      "c = torch.load(p, weights_only=True)\nd = pickle.loads(x)\n")
    problems = _unsafe_loads(sample)
    assert sorted(int(p.split(":")[1]) for p in problems) == [3, 4, 4, 6], problems
