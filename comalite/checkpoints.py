"""Which checkpoint a name means, and whether it is the one it should be.

``resolve_checkpoint`` turns ``model.backbone`` into a folder or a hub id: ``tiny`` / ``tiny-smoke`` are the
checkpoints kept under ``data/`` (shipped, or built by ``comalite build-tiny``), verified against their
``CHECKSUMS`` listing every time they load; a damaged one is an error, never silently rebuilt.
``checkpoint_fingerprint`` is what run records and caches key a backbone by.
"""
from __future__ import annotations

from pathlib import Path

from .errors import CheckpointError, ChecksumError
from .fingerprint import files_fingerprint, sha256_file, verify_sha256
from .paths import data_dir, repo_dir, shipped_dir

CHECKSUMS = "CHECKSUMS"


NAMED_CHECKPOINTS = ("tiny", "tiny-smoke")
"""Checkpoints known by name, kept under ``data/``: ``tiny`` is shipped with the repository, ``tiny-smoke`` is
built on first use by ``comalite.pipeline`` (loading never builds)."""


def named_checkpoint_dir(name: str) -> Path:
    """Where the checkpoint called ``name`` lives: ``tiny`` -> ``data/tiny-vlm``, ``tiny-smoke`` ->
    ``data/tiny-vlm-smoke``."""
    return data_dir() / name.replace("tiny", "tiny-vlm", 1)


def resolve_checkpoint(backbone: str) -> Path | str:
    """``tiny`` / ``tiny-smoke`` -> its folder under ``data/`` (checksum verified); a folder -> itself; else a
    hub id."""
    if backbone in NAMED_CHECKPOINTS:
        folder = named_checkpoint_dir(backbone)
        packaged = shipped_dir() / folder.name if shipped_dir() else None
        if not (folder / "config.json").exists() and packaged and (packaged / "config.json").exists():
            folder = packaged  # an installed copy reads the checkpoint its wheel carries, in place
        if not (folder / "config.json").exists():
            raise CheckpointError(f"the {backbone} checkpoint is not in {folder}: build it with "
                                  f"`comalite build-tiny{' --smoke' if backbone == 'tiny-smoke' else ''}`")
        verify_checksums(folder, required=True)
        return folder
    path = Path(backbone).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise CheckpointError(f"{path} has no config.json: not a transformers checkpoint folder. Point "
                                  "model.backbone at the folder that holds config.json and the weights.")
        return path
    if backbone.startswith((".", "/", "~")):
        raise CheckpointError(f"checkpoint folder {backbone} does not exist: fix model.backbone")
    return backbone


def verify_checksums(folder: Path, *, required: bool = False, fix: str | None = None) -> None:
    """Check every file listed in ``folder/CHECKSUMS`` (``<sha256>  <name>`` lines, as ``sha256sum`` writes
    them; blank lines are skipped): a shipped checkpoint must be the one its report describes. ``fix`` says how
    to restore the folder (default: the tiny checkpoints' ways).

    A file that is missing or whose sha256 differs, a malformed line, or (``required``: the named ``tiny`` /
    ``tiny-smoke`` checkpoints) a missing listing raise ``ChecksumError``, one line naming the file and how
    to restore it. Never a rebuild: the files may be tracked ones, and a rebuild would hide the damage.
    """
    folder = Path(folder)
    listing = folder / CHECKSUMS
    shipped = repo_dir() is not None and folder.resolve().parent == (repo_dir() / "data").resolve()
    smoke = " --smoke" if folder.name.endswith("-smoke") else ""
    took = "a minute" if smoke else "an hour on a CPU"
    fix = fix or (f"restore it with `git checkout data/{folder.name}`" if shipped else
                  f"rebuild the checkpoint with `comalite build-tiny{smoke}` ({took}), or copy data/{folder.name} "
                  "from a comalite checkout")
    if not listing.exists():
        if required:
            raise ChecksumError(f"{listing} is missing, so the weights in {folder} cannot be verified: {fix}")
        return
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ChecksumError(f"{listing}: cannot read it ({err}): {fix}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        expected = parts[0].lower()
        name = parts[1].strip().lstrip("*") if len(parts) == 2 else ""  # sha256sum marks binary mode with '*'
        if (len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected) or not name
                or Path(name).is_absolute() or ".." in Path(name).parts):
            raise ChecksumError(f"{listing}, line {number}: expected '<64 hex digits>  <file name>', got "
                                f"{line[:80]!r}: {fix}")
        verify_sha256(folder / name, expected, listing, fix, ChecksumError)
    if required and not any(line.strip() for line in lines):
        raise ChecksumError(f"{listing} lists no files, so the weights in {folder} cannot be verified: {fix}")


def checkpoint_fingerprint(backbone: str) -> str:
    """A hash of what a checkpoint holds: its config and weight files (a hub id stands for itself)."""
    folder = resolve_checkpoint(backbone)
    if not isinstance(folder, Path):
        return f"hub:{folder}"
    files = [p for p in folder.iterdir() if p.suffix in (".json", ".safetensors", ".bin", ".model", ".txt")]
    return files_fingerprint(files)


def write_checksums(folder: Path) -> None:
    """``CHECKSUMS`` (``sha256sum`` format) of every file under ``folder``, sub-folders included (by relative
    path, as ``sha256sum`` run in ``folder`` writes it); ``verify_checksums`` reads it."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    lines = [f"{sha256_file(folder / name)}  {name}\n" for name in files if name != CHECKSUMS]
    (folder / CHECKSUMS).write_text("".join(lines))


def offline_error(backbone: str, err: Exception) -> CheckpointError:
    """The error for a hub id that could not be fetched, with the offline way round it."""
    return CheckpointError(
        f"could not load checkpoint '{backbone}': it is not a local folder and could not be fetched from the "
        f"Hugging Face hub ({type(err).__name__}: {err}). Offline? Download it once where there is network "
        f"(`huggingface-cli download {backbone} --local-dir /some/folder`) and pass the folder instead: "
        f"`--set model.backbone=/some/folder`."
    )
