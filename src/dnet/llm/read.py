"""`read_model(source)`: a GGUF file or a Hugging Face folder, read into a `ModelFile`."""
from __future__ import annotations

from pathlib import Path

from dnet.errors import ModelFileError
from dnet.llm.model_file import ModelFile


def read_model(source: str | Path) -> ModelFile:
    """Read the model at `source`: a `.gguf` file, or a folder with `config.json` and safetensors."""
    path = Path(source).expanduser()
    if path.is_dir():
        from dnet.llm.hf_reader import read_hf_folder

        return read_hf_folder(path)
    if path.is_file():
        from dnet.llm.gguf_reader import read_gguf

        return read_gguf(path)
    raise ModelFileError(f"{source}: no such file or folder", hint="a .gguf file or a Hugging Face model folder")
