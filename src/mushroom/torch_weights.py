"""Read a PyTorch state dict saved in the legacy (pre-1.6) format, without torch.

The file is a few pickles (magic number, protocol version, system info), then the state dict
itself as a pickle whose tensors point at storages by key, then the list of storage keys, and
then each storage's raw little-endian bytes, preceded by its element count. The standard
library's :mod:`pickle` reads the pickles through an unpickler that rebuilds tensors and plain
containers and refuses every other class, so a file cannot run code; numpy turns each storage
into arrays, honouring each tensor's offset and strides (a reader that ignored the strides of
non-contiguous tensors would return scrambled weights).
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class WeightsFileError(ValueError):
    """The weights file is not a legacy PyTorch state dict this reader accepts."""


@dataclass(frozen=True)
class _StorageType:
    dtype: type


@dataclass(frozen=True)
class _TensorRef:
    key: str
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds tensors and ordered dicts; any other global is an error naming it."""

    def __init__(self, file, storages: dict[str, tuple[type, int]]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise WeightsFileError(f"the pickle asks for {module}.{name}; only tensors and plain containers are read")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise WeightsFileError(f"unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel, *view = pid
        if view and view[0] is not None:
            raise WeightsFileError("storage views are not supported")
        self._storages.setdefault(str(key), (storage_type.dtype, int(numel)))
        return str(key)


def _load_pickle(stream: io.BufferedIOBase, storages: dict) -> object:
    return _RestrictedUnpickler(stream, storages).load()


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read every tensor of a legacy-format ``.pth`` state dict as a numpy array.

    Args:
        path: The ``.pth`` file.

    Returns:
        Name -> array (C-contiguous copies, in the file's order).

    Raises:
        WeightsFileError: The file is truncated, not in the legacy format, or its pickle asks
            for anything but tensors and plain containers (the message names what).
        FileNotFoundError: There is no such file.
    """
    path = Path(path)
    data = path.read_bytes()
    stream = io.BytesIO(data)
    storages: dict[str, tuple[type, int]] = {}
    try:
        magic = _load_pickle(stream, storages)
        if magic != LEGACY_MAGIC:
            raise WeightsFileError("not a legacy PyTorch file (wrong magic number)")
        protocol = _load_pickle(stream, storages)
        if protocol != PROTOCOL_VERSION:
            raise WeightsFileError(f"unsupported protocol version {protocol}")
        sys_info = _load_pickle(stream, storages)
        if not (isinstance(sys_info, dict) and sys_info.get("little_endian", False)):
            raise WeightsFileError("only little-endian files are supported")
        state = _load_pickle(stream, storages)
        keys = _load_pickle(stream, storages)
    except WeightsFileError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise WeightsFileError(f"corrupt or truncated header ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or not isinstance(keys, list):
        raise WeightsFileError("the file does not hold a state dict")

    buffers: dict[str, np.ndarray] = {}
    position = stream.tell()
    for key in keys:
        if key not in storages:
            raise WeightsFileError(f"storage {key} is listed but no tensor uses it")
        dtype, numel = storages[key]
        if position + 8 > len(data):
            raise WeightsFileError(f"truncated: storage {key} is missing")
        (count,) = struct.unpack_from("<q", data, position)
        position += 8
        nbytes = count * np.dtype(dtype).itemsize
        if count != numel or position + nbytes > len(data):
            raise WeightsFileError(f"truncated or corrupt: storage {key} should hold {numel} values")
        buffers[key] = np.frombuffer(data, dtype=dtype, count=count, offset=position)
        position += nbytes
    if position != len(data):
        raise WeightsFileError(f"{len(data) - position} unexpected bytes after the last storage")

    tensors: dict[str, np.ndarray] = {}
    for name, ref in state.items():
        if not isinstance(ref, _TensorRef):
            raise WeightsFileError(f"entry {name!r} is not a tensor")
        if ref.key not in buffers:
            raise WeightsFileError(f"tensor {name!r} points at storage {ref.key}, which the file does not hold")
        buffer = buffers[ref.key]
        itemsize = buffer.itemsize
        extent = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True)) + 1
        if any(n == 0 for n in ref.shape):
            extent = 0
        if extent > buffer.size:
            raise WeightsFileError(f"tensor {name!r} reaches past the end of its storage")
        view = np.lib.stride_tricks.as_strided(
            buffer[ref.offset:], shape=ref.shape, strides=tuple(s * itemsize for s in ref.stride), writeable=False)
        tensors[str(name)] = np.ascontiguousarray(view)
    return tensors
