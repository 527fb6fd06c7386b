"""Read weight files without running code from them.

- `.safetensors`: read by safetensors (no pickle at all).
- torch pickles (zip or legacy): `torch.load(weights_only=True)`, plus `argparse.Namespace`, the
  one non-tensor class that released MAE / DINO / DeiT training checkpoints carry (`'args'`).
  Anything else is refused with the file's name and a safe way out.
- TorchScript archives (OpenAI CLIP `ViT-B-16.pt`): `torch.jit.load` would run the archive's
  `code/`; instead `data.pkl` is unpickled with a restricted unpickler whose only globals are the
  tensor rebuilder, storage dtypes and inert stand-ins for the archive's `__torch__.*` classes, and
  `code/*.py` is read as text only for each class's `__parameters__` / `__buffers__` lists.
"""

import argparse
import io
import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

SAFE_GLOBALS = [argparse.Namespace]

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class UnsafeCheckpointError(RuntimeError):
    """The file needs arbitrary code to load; we refuse rather than run it."""


def conversion_hint() -> str:
    """How to convert a trusted pickle to safetensors on a trusted machine. Python steps, not a shell
    line: a file name pasted into a shell command could run as code."""
    return (
        "in Python, c = torch.load(PATH, weights_only=False); c = c.get('model', c.get('state_dict', c)); "
        "safetensors.torch.save_file({k: v.contiguous() for k, v in c.items() if torch.is_tensor(v)}, OUT)"
    )


def is_torchscript_archive(path: str | Path) -> bool:
    """TorchScript zips hold `<name>/constants.pkl` and `<name>/code/`; torch.save zips do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(re.fullmatch(r"[^/]+/(constants\.pkl|code/.*)", n) for n in z.namelist())


def load_weights(path: str | Path) -> dict:
    """The object stored in a weight file, read without executing anything from the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such weight file: {path}")
    from ..validate import weight_file

    weight_file("weight file", path)  # empty or not a weight format at all: said as such
    try:
        return _read(path)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"{path} needs arbitrary code to load and was refused ({_first_line(err)}). "
            f"If you trust it, convert it once on a trusted machine to safetensors ({conversion_hint()}) "
            "and pass the .safetensors file instead."
        ) from None


def _read(path: Path) -> dict:
    """The file's object; a file its own reader cannot parse (a lying safetensors header, a zip that is not
    torch's, a truncated archive) is a ValueError naming it: bad input, not a crash."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        if is_torchscript_archive(path):
            return read_torchscript_state_dict(path)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, UnsafeCheckpointError):
        raise
    except Exception as err:  # safetensors' SafetensorError, torch's RuntimeError from its zip reader, EOFError
        raise ValueError(f"{path} is not a readable weight file ({_first_line(err)})") from None


def _first_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return next((ln for ln in lines if "GLOBAL" in ln or "global" in ln), lines[0] if lines else type(err).__name__)


# ---------------------------------------------------------------- TorchScript archives, read as data


class _ScriptObject:
    """Inert stand-in for a TorchScript class: keeps the pickled attribute dict, runs nothing."""

    qualname = ""

    def __setstate__(self, state):
        self.state = state


def _script_class(module: str, name: str) -> type:
    return type(name, (_ScriptObject,), {"qualname": f"{module}.{name}"})


def _rebuild_tensor(storage, offset, size, stride, *_unused):
    return torch.empty(0, dtype=storage.dtype).set_(storage.untyped_storage(), offset, size, stride)


def _build_list(items):
    return list(items)


class _ArchiveUnpickler(pickle.Unpickler):
    """Resolves only the globals a TorchScript `data.pkl` of tensors and modules needs."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, path: Path):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.path = archive, prefix, path

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            return _script_class(module, name)
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch.jit._pickle" and name.startswith("build_"):
            return _build_list
        raise UnsafeCheckpointError(
            f"{self.path}: TorchScript data.pkl refers to global {module}.{name}, which is not a tensor or "
            "module attribute; refused. Load it with torch.jit.load on a trusted machine and save "
            "`model.state_dict()` with safetensors, then pass that file."
        )

    def persistent_load(self, pid):
        kind, dtype, key, _location, numel = pid
        if kind != "storage":
            raise UnsafeCheckpointError(f"{self.path}: unknown persistent id {kind!r} in data.pkl")
        raw = bytearray(self.archive.read(f"{self.prefix}/data/{key}"))
        return torch.frombuffer(raw, dtype=dtype, count=numel) if numel else torch.empty(0, dtype=dtype)


def _declared_tensors(archive: zipfile.ZipFile, prefix: str) -> dict[str, set[str]]:
    """Class qualname -> names in its `__parameters__` and `__buffers__` (read from code/ as text)."""
    declared = {}
    for name in archive.namelist():
        if not (name.startswith(f"{prefix}/code/") and name.endswith(".py")):
            continue
        module = name[len(prefix) + 6 : -3].replace("/", ".")
        text = archive.read(name).decode("utf-8", errors="replace")
        for cls, body in re.findall(r"^class (\w+)\(Module\):\n((?:  .*\n)*)", text, flags=re.M):
            lists = re.findall(r"^  __(?:parameters|buffers)__ = \[(.*)\]$", body, flags=re.M)
            if lists:  # no declaration found: _flatten keeps every tensor of that class
                declared[f"{module}.{cls}"] = {n for chunk in lists for n in re.findall(r'"(\w+)"', chunk)}
    return declared


def _flatten(obj: _ScriptObject, declared: dict[str, set[str]], prefix: str, out: dict) -> None:
    """Walk modules like `state_dict()`: declared parameters and buffers, then submodules."""
    state = obj.state if isinstance(getattr(obj, "state", None), dict) else {}
    names = declared.get(obj.qualname)
    for key, value in state.items():
        if isinstance(value, _ScriptObject):
            _flatten(value, declared, f"{prefix}{key}.", out)
        elif torch.is_tensor(value) and (names is None or key in names):
            out[prefix + key] = value


def read_torchscript_state_dict(path: str | Path) -> "OrderedDict[str, torch.Tensor]":
    """The `state_dict()` of a TorchScript archive, without `torch.jit.load` (which runs its code)."""
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        pkl = next(n for n in archive.namelist() if re.fullmatch(r"[^/]+/data\.pkl", n))
        prefix = pkl.split("/")[0]
        order = f"{prefix}/byteorder"
        if order in archive.namelist() and archive.read(order).decode().strip() != "little":
            raise UnsafeCheckpointError(f"{path}: big-endian archive; re-save it on a little-endian machine")
        root = _ArchiveUnpickler(archive.read(pkl), archive, prefix, path).load()
        out = OrderedDict()
        _flatten(root, _declared_tensors(archive, prefix), "", out)
    if not out:
        raise ValueError(f"{path}: the TorchScript archive holds no tensors under its module tree")
    return out
