"""Every weight file is verified: a flipped byte or a truncated file is one error naming the file and the fix,
never a silent rebuild, resume or evaluation.

- the tiny checkpoints under ``data/`` are checked against their ``CHECKSUMS``; a mismatch (or a missing or
  malformed listing) is a ``ChecksumError``, and only a truly missing checkpoint (no config.json) is built;
- ``result.json`` records the sha256 of the adapters and compression rows it describes, checked on load;
- ``checkpoint.pt`` holds a hash of its own contents, checked on resume;
- a truncated or malformed ``run.json``, ``result.json``, ``checkpoint.pt`` or safetensors file is one line.

Nothing under the repository's ``data/`` is touched: the checkpoint is copied into the test's folder and
``COMALITE_DATA`` points there.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from cli_checks import cli_error
from comalite.cli import main
from comalite.errors import ChecksumError, ComaliteError, CorruptFileError

RUN = ("stage1.train.steps=2", "stage1.train.save_every=1", "stage1.train.batch_size=4", "stage1.heldout=4")
"""A finished stage 1 in seconds: two steps, a checkpoint after each."""


def smoke(out: Path, *sets: str) -> list[str]:
    return ["--preset", "tiny-smoke", "--set", f"out_dir={out}", *(a for s in sets for a in ("--set", s))]


def flip(path: Path, offset: int) -> None:
    """Flip every bit of the byte at ``offset`` (negative: from the end)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def one_line(err: Exception) -> str:
    message = str(err)
    assert "\n" not in message, message
    return message


# ----------------------------------------------------------------------------- the backbone's CHECKSUMS


@pytest.fixture
def data_copy(tmp_path, tiny_home, monkeypatch) -> Path:
    """``COMALITE_DATA`` pointing at a folder holding a copy of the tiny-smoke checkpoint (the session's other
    data linked in, so ShapesWorld is not generated again); returns the checkpoint copy."""
    data = tmp_path / "data"
    data.mkdir()
    for entry in tiny_home.iterdir():
        if entry.name != "tiny-vlm-smoke" and not entry.name.startswith("."):
            (data / entry.name).symlink_to(entry)
    shutil.copytree(tiny_home / "tiny-vlm-smoke", data / "tiny-vlm-smoke")
    monkeypatch.setenv("COMALITE_DATA", str(data))
    return data / "tiny-vlm-smoke"


@pytest.fixture
def no_rebuild(monkeypatch):
    import comalite.pipeline

    monkeypatch.setattr(comalite.pipeline, "build_tiny",
                        lambda name: pytest.fail(f"the {name} checkpoint was rebuilt over a damaged one"))


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_flipped_byte_in_the_tiny_checkpoint_is_an_error_not_a_rebuild(data_copy, no_rebuild):
    from conftest import make_config

    from comalite.pipeline import ensure_backbone

    weights = data_copy / "model.safetensors"
    expected = _sha256(weights)
    flip(weights, -100)
    damaged = weights.read_bytes()
    with pytest.raises(ChecksumError) as caught:
        ensure_backbone(make_config())
    message = one_line(caught.value)
    assert message.startswith(f"{weights} is corrupt or was changed: its sha256 is {_sha256(weights)}, "
                              f"{data_copy / 'CHECKSUMS'} expects {expected}")
    assert "comalite build-tiny --smoke" in message
    assert weights.read_bytes() == damaged  # left as it is for the user to look at


def test_a_damaged_checkpoint_is_one_line_on_the_command_line(capsys, tmp_path, data_copy, no_rebuild,
                                                              no_model_load):
    flip(data_copy / "model.safetensors", -100)
    message = cli_error(capsys, "stage1", *smoke(tmp_path / "run"))
    assert message.startswith(f"{data_copy / 'model.safetensors'} is corrupt or was changed")


def test_a_shipped_checkpoint_is_restored_with_git(data_copy, monkeypatch):
    import comalite.checkpoints
    from comalite.checkpoints import verify_checksums

    monkeypatch.setattr(comalite.checkpoints, "repo_dir", lambda: data_copy.parent.parent)  # data_copy is "shipped"
    flip(data_copy / "tokenizer.json", 10)
    with pytest.raises(ChecksumError, match=r"restore it with `git checkout data/tiny-vlm-smoke`$"):
        verify_checksums(data_copy)


@pytest.mark.parametrize("damage, message", [
    ("delete-listing", "{listing} is missing, so the weights in {folder} cannot be verified"),
    ("empty-listing", "{listing} lists no files, so the weights in {folder} cannot be verified"),
    ("bad-line", "{listing}, line 3: expected '<64 hex digits>  <file name>', got 'not a checksum line'"),
    ("short-hash", "{listing}, line 1: expected '<64 hex digits>  <file name>', got 'abc123  config.json'"),
    ("missing-file", "{folder}/generation_config.json is missing (listed in {listing})"),
], ids=["missing-CHECKSUMS", "empty-CHECKSUMS", "malformed-line", "short-hash", "listed-file-missing"])
def test_a_missing_or_malformed_listing_is_an_error_naming_it(data_copy, no_rebuild, damage, message):
    from conftest import make_config

    from comalite.pipeline import ensure_backbone

    listing = data_copy / "CHECKSUMS"
    lines = listing.read_text().splitlines()
    if damage == "delete-listing":
        listing.unlink()
    elif damage == "empty-listing":
        listing.write_text("\n")
    elif damage == "bad-line":
        listing.write_text("\n".join(lines[:2] + ["not a checksum line"] + lines[2:]) + "\n")
    elif damage == "short-hash":
        listing.write_text("\n".join(["abc123  config.json"] + lines[1:]) + "\n")
    else:
        (data_copy / "generation_config.json").unlink()
    with pytest.raises(ChecksumError) as caught:
        ensure_backbone(make_config())
    assert one_line(caught.value).startswith(message.format(listing=listing, folder=data_copy))
    assert "comalite build-tiny --smoke" in str(caught.value)


def test_blank_lines_in_the_listing_are_skipped(data_copy):
    from comalite.checkpoints import resolve_checkpoint

    listing = data_copy / "CHECKSUMS"
    listing.write_text("\n" + listing.read_text().replace("\n", "\n\n"))
    assert resolve_checkpoint("tiny-smoke") == data_copy


def test_only_a_missing_checkpoint_is_built(data_copy, monkeypatch):
    import comalite.pipeline
    from conftest import make_config

    built = []
    monkeypatch.setattr(comalite.pipeline, "build_tiny", lambda name: built.append(name) or data_copy)
    (data_copy / "config.json").unlink()
    assert comalite.pipeline.ensure_backbone(make_config()) == data_copy
    assert built == ["tiny-smoke"]


# ----------------------------------------------------------------------------- checkpoint.pt


def _trainer(out: Path, steps: int = 3):
    from comalite.config import TrainConfig
    from comalite.trainer import Trainer

    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(16, 8))
    bias = torch.nn.Parameter(torch.zeros(8))

    def step(_: int) -> float:
        loss = ((weight.sum(0) + bias) ** 2).mean()
        loss.backward()
        return float(loss.detach())

    cfg = TrainConfig(steps=steps, save_every=1, lr=1e-2, warmup_ratio=0.0)
    return Trainer({"weight": weight, "bias": bias}, cfg, out, step, fingerprint="f", progress=False)


def test_a_checkpoint_resumes_exactly_when_intact_and_refuses_a_flipped_byte(tmp_path):
    from comalite.trainer import STATE_HASH

    first = _trainer(tmp_path)
    first.run(stop_at=2)
    path = first.checkpoint_path
    assert STATE_HASH in torch.load(path, weights_only=False)
    again = _trainer(tmp_path)
    assert again.load_checkpoint() and again.step == 2
    assert torch.equal(again.params["weight"], first.params["weight"])

    # One byte inside the stored weights: torch.load reads it without complaint, the hash does not match.
    raw = first.params["weight"].detach().numpy().tobytes()
    offset = path.read_bytes().find(raw[:32])
    assert offset > 0
    flip(path, offset + 5)
    torch.load(path, weights_only=False)  # what happened before: a silent resume from other weights
    with pytest.raises(CorruptFileError) as caught:
        _trainer(tmp_path).load_checkpoint()
    assert one_line(caught.value) == (f"{path} is corrupt: its contents no longer match the hash stored in it "
                                      "when it was written; delete it and run the same command again: the stage "
                                      "then restarts from step 0")


def test_a_truncated_checkpoint_is_one_line(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.run(stop_at=1)
    truncate(trainer.checkpoint_path)
    with pytest.raises(CorruptFileError) as caught:
        _trainer(tmp_path).run()
    assert one_line(caught.value).startswith(f"{trainer.checkpoint_path}: cannot read this checkpoint (")
    assert "truncated or corrupt; delete it and run the same command again" in str(caught.value)


def test_a_checkpoint_written_before_the_hash_still_resumes(tmp_path):
    from comalite.trainer import STATE_HASH

    trainer = _trainer(tmp_path)
    trainer.run(stop_at=2)
    state = torch.load(trainer.checkpoint_path, weights_only=False)
    del state[STATE_HASH]
    torch.save(state, trainer.checkpoint_path)
    assert _trainer(tmp_path).load_checkpoint()


# ----------------------------------------------------------------------------- result folders (a real stage 1)


@pytest.fixture(scope="module")
def finished(tiny_home, tmp_path_factory) -> Path:
    """A finished two-step stage 1 (its ``checkpoint.pt`` kept), through the command line."""
    out = tmp_path_factory.mktemp("finished")
    main(["stage1", *smoke(out, *RUN)])
    return out


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    """A copy of ``finished`` this test may damage; returns its run folder."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def test_result_json_records_the_sha256_of_every_weight_file(finished):
    from comalite.fingerprint import sha256_file
    from comalite.result import read_result

    folder = finished / "stage1"
    recorded = read_result(folder)["sha256"]
    assert set(recorded) == {"compression.safetensors", "adapters/stage1/adapter_model.safetensors",
                             "adapters/stage1/adapter_config.json"}
    assert all(sha256_file(folder / rel) == digest for rel, digest in recorded.items())


@pytest.mark.parametrize("damage", ["flipped-byte", "truncated"])
@pytest.mark.parametrize("name", ["adapters/stage1/adapter_model.safetensors", "compression.safetensors"])
def test_a_damaged_weight_file_is_not_loaded(run_copy, no_model_load, name, damage):
    from comalite.result import load_result

    folder = run_copy / "stage1"
    flip(folder / name, -3) if damage == "flipped-byte" else truncate(folder / name)
    with pytest.raises(CorruptFileError) as caught:
        load_result(folder)
    message = one_line(caught.value)
    assert message.startswith(f"{folder / name} is corrupt or was changed: its sha256 is ")
    assert f", {folder / 'result.json'} expects " in message
    assert message.endswith(f": delete {folder} and run stage1 again to retrain it")


def test_a_flipped_adapter_byte_is_not_evaluated(capsys, run_copy, no_model_load):
    folder = run_copy / "stage1"
    flip(folder / "adapters/stage1/adapter_model.safetensors", -3)
    message = cli_error(capsys, "eval", *smoke(run_copy), "--models", str(folder))
    assert message.startswith(f"{folder / 'adapters/stage1/adapter_model.safetensors'} is corrupt or was changed")


def test_a_flipped_adapter_byte_is_not_exported(capsys, run_copy, tmp_path):
    folder = run_copy / "stage1"
    flip(folder / "adapters/stage1/adapter_model.safetensors", -3)
    message = cli_error(capsys, "export", str(folder), "--out", str(tmp_path / "export"))
    assert message.startswith(f"{folder / 'adapters/stage1/adapter_model.safetensors'} is corrupt or was changed")
    assert not (tmp_path / "export").exists()


def test_a_result_written_before_the_hashes_still_loads_and_refuses_truncated_files(run_copy):
    from comalite.result import load_result

    folder = run_copy / "stage1"
    info = json.loads((folder / "result.json").read_text())
    del info["sha256"]
    (folder / "result.json").write_text(json.dumps(info))
    assert load_result(folder).adapters == ("stage1",)
    truncate(folder / "adapters/stage1/adapter_model.safetensors")
    with pytest.raises(CorruptFileError, match=r"adapter_model.safetensors: cannot read it \(.*\): the file is "
                                               r"truncated or corrupt; delete .* and run stage1 again"):
        load_result(folder)


def test_a_truncated_compression_file_is_one_line(run_copy):
    from comalite.compression import CompressionTokens

    folder = run_copy / "stage1"
    truncate(folder / "compression.safetensors")
    with pytest.raises(CorruptFileError) as caught:
        CompressionTokens.load(folder)
    assert one_line(caught.value).startswith(f"{folder / 'compression.safetensors'}: cannot read the "
                                             "compression rows (")


def _without_model(text: str) -> str:
    info = json.loads(text)
    del info["model"]
    return json.dumps(info)


@pytest.mark.parametrize("edit, problem", [
    (lambda text: text[:len(text) // 2], "not valid JSON ("),
    (lambda text: '["stage1"]', "holds a JSON list, not a comalite result"),
    (_without_model, "no valid 'model' in it, so it is not a complete comalite result"),
], ids=["truncated", "a-list", "no-model"])
def test_a_bad_result_json_is_one_line(capsys, run_copy, no_model_load, edit, problem):
    from comalite.result import load_result

    folder = run_copy / "stage1"
    result_json = folder / "result.json"
    result_json.write_text(edit(result_json.read_text()))
    with pytest.raises(CorruptFileError) as caught:
        load_result(folder)
    assert one_line(caught.value).startswith(f"{result_json}: {problem}")
    assert f"delete {folder} and run " in str(caught.value)
    assert cli_error(capsys, "eval", *smoke(run_copy), "--models", str(folder)).startswith(f"{result_json}: {problem}")


@pytest.mark.parametrize("text, problem", [
    ('{"fingerprint": "ab', "not valid JSON (Unterminated string"),
    ('["fingerprint"]', "holds a JSON list, not a comalite run record"),
    ('{"settings": {}}', "holds no 'fingerprint', not a comalite run record"),
], ids=["truncated", "a-list", "no-fingerprint"])
def test_a_bad_run_json_is_one_line(capsys, run_copy, no_model_load, text, problem):
    run_json = run_copy / "stage1" / "run.json"
    run_json.write_text(text)
    message = cli_error(capsys, "stage1", *smoke(run_copy, *RUN))
    assert message.startswith(f"{run_json}: {problem}")
    assert message.strip().endswith("or run into another folder (--set out_dir=...)") and "\n" not in message.strip()


def test_a_flipped_byte_in_checkpoint_pt_does_not_resume(capsys, run_copy):
    """A finished stage whose result.json is gone reruns from its checkpoint: a damaged one is refused."""
    folder = run_copy / "stage1"
    (folder / "result.json").unlink()
    checkpoint = folder / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=False)
    rows = next(t for n, t in state["params"].items() if "compression" in n or n.endswith("rows"))
    offset = checkpoint.read_bytes().find(rows.numpy().tobytes()[:32])
    assert offset > 0
    flip(checkpoint, offset + 9)
    message = cli_error(capsys, "stage1", *smoke(run_copy, *RUN))
    assert message.strip() == (f"{checkpoint} is corrupt: its contents no longer match the hash stored in it when "
                               "it was written; delete it and run the same command again: the stage then restarts "
                               "from step 0")
    assert not (folder / "result.json").exists()


def test_errors_are_comalite_errors():
    assert issubclass(ChecksumError, CorruptFileError) and issubclass(CorruptFileError, ComaliteError)
    assert os.environ["COMALITE_DATA"]  # the session's data folder, never the repository's
