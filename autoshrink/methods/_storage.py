"""How a method's tensors are stored: packed low-bit floats, packed integers, sparse overlays.

Every byte a compressed model claims is counted here: each packing function (pack_float,
pack_sparse) has a twin that describes its output by name, dtype and shape without packing
(float_specs, sparse_specs), and bytes and the safetensors header follow from those
descriptions (Specs), so the analytic count, the export and the file cannot drift apart.

Float storage (`bits` of a method config):
  32 -> fp32, 16 -> fp16, 2..8 -> affine min-max codes per group (a row, or `group_size`
  consecutive values of a row) with an fp16 scale and an fp16 minimum per group (4 bytes).
  Codes are bit-packed: ceil(bits * n / 8) bytes for n values.
Sparse storage (pruning masks, doping overlays): the cheaper of CSR (int32 row pointers, uint16
or int32 column indices) and a bitmask (one bit per element), values stored as above.
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from autoshrink.errors import UserError

FLOAT_BITS = (2, 3, 4, 5, 6, 7, 8, 16, 32)
Specs = dict[str, tuple[torch.dtype, tuple[int, ...]]]  # name -> (dtype, shape): stored tensors, described


# The knob of the factor methods (lowrank, groupreduce) that stores a factor U transposed.
U_GROUPS_HELP = (
    "U below 16 bits: 0 = a scale per row; g > 0 = stored transposed, a scale per g rows of each column "
    "(cheaper for a vocabulary matrix of small rank)"
)


def check_bits(bits: int) -> None:
    if bits not in FLOAT_BITS:
        raise UserError(f"bits must be one of {FLOAT_BITS}, got {bits!r}")


def as_rows(shape: tuple[int, ...]) -> tuple[int, int]:
    """Quantisation rows of a tensor: its first dimension (a 1-D tensor is one row)."""
    if len(shape) <= 1:
        return 1, int(shape[0]) if shape else 1
    return int(shape[0]), int(math.prod(shape[1:]))


def groups_per_row(cols: int, group_size: int) -> int:
    return 1 if group_size <= 0 else math.ceil(cols / group_size)


def float_bytes(shape: tuple[int, ...], bits: int, group_size: int = 0) -> int:
    """Stored bytes of a float tensor of `shape` at `bits`."""
    return specs_bytes(float_specs(shape, bits, group_size))


def float_specs(shape: tuple[int, ...], bits: int, group_size: int = 0) -> Specs:
    """What pack_float writes for a float tensor of `shape`, without packing it: sub-name
    ("" for the tensor itself, else codes / scale / min) -> (dtype, shape)."""
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    if bits >= 16:
        return {"": (torch.float32 if bits == 32 else torch.float16, shape)}
    if n == 0:
        return {}  # nothing to quantise (pack_sparse stores no values then)
    rows, cols = as_rows(shape)
    scales = (rows * groups_per_row(cols, group_size),)
    return {
        "codes": (torch.uint8, (uint_bytes(n, bits),)),
        "scale": (torch.float16, scales),
        "min": (torch.float16, scales),
    }


def uint_bytes(n: int, bits: int) -> int:
    """Bytes of n integers bit-packed at `bits` (pack_uint)."""
    return math.ceil(bits * n / 8)


def prefixed(prefix: str, parts: dict) -> dict:
    """The parts of one stored tensor (specs or tensors) under its name: "" is the name itself,
    "k" becomes "name.k"."""
    return {f"{prefix}.{k}" if k else prefix: v for k, v in parts.items()}


def spec_bytes(spec: tuple[torch.dtype, tuple[int, ...]]) -> int:
    dtype, shape = spec
    return int(math.prod(shape)) * dtype.itemsize


def specs_bytes(specs: Specs) -> int:
    """Bytes of the tensors that `specs` describe (name -> (dtype, shape)), the header excluded."""
    return sum(spec_bytes(spec) for spec in specs.values())


def specs_of(tensors: dict[str, torch.Tensor]) -> Specs:
    """The specs of real tensors: what a test compares a method's predicted specs with."""
    return {name: (t.dtype, tuple(t.shape)) for name, t in tensors.items()}


def _grouped(t: torch.Tensor, group_size: int) -> tuple[torch.Tensor, int]:
    """View `t` as (rows, groups, group) with the last group padded by its edge value."""
    rows, cols = as_rows(tuple(t.shape))
    x = t.reshape(rows, cols)
    g = cols if group_size <= 0 else min(group_size, cols)
    ngroups = math.ceil(cols / g)
    pad = ngroups * g - cols
    if pad:
        x = torch.cat([x, x[:, -1:].expand(rows, pad)], dim=1)
    return x.reshape(rows, ngroups, g), pad


def affine_grid(grouped: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp16-rounded scale and minimum per group (over the last dimension), so that export and
    forward agree exactly: group values are stored as codes * scale + minimum."""
    lo = grouped.amin(dim=-1, keepdim=True).detach()
    hi = grouped.amax(dim=-1, keepdim=True).detach()
    levels = 2**bits - 1
    lo16 = lo.to(torch.float16)
    scale16 = (
        ((hi - lo16.float()) / levels).clamp_min(2.0**-24).to(torch.float16)
    )  # fp16 smallest subnormal: 1e-8 rounded to 0 (NaN codes for a constant group)
    scale16 = torch.where(torch.isfinite(scale16), scale16, torch.full_like(scale16, 65504.0))
    return scale16, lo16


def _codes(grouped: torch.Tensor, scale16: torch.Tensor, lo16: torch.Tensor, bits: int) -> torch.Tensor:
    return torch.clamp(torch.round((grouped - lo16.float()) / scale16.float()), 0, 2**bits - 1)


def fake_quant(t: torch.Tensor, bits: int, group_size: int = 0) -> torch.Tensor:
    """Round `t` to its stored values; gradients pass straight through (STE)."""
    if bits >= 32:
        return t
    return t + (stored_values(t, bits, group_size) - t).detach()


def stored_values(t: torch.Tensor, bits: int, group_size: int = 0) -> torch.Tensor:
    """The values `t` is stored as (no gradient), exactly: stored_values of them are themselves."""
    t = t.detach()
    if bits >= 32:
        return t
    if bits == 16:
        return t.to(torch.float16).float()
    grouped, pad = _grouped(t, group_size)
    scale16, lo16 = affine_grid(grouped, bits)
    deq = _codes(grouped, scale16, lo16, bits) * scale16.float() + lo16.float()
    rows = grouped.shape[0]
    deq = deq.reshape(rows, -1)
    if pad:
        deq = deq[:, :-pad]
    return deq.reshape(t.shape)


def pack_uint(values: torch.Tensor | np.ndarray, bits: int) -> torch.Tensor:
    """Bit-pack non-negative integers < 2**bits into ceil(bits * n / 8) uint8 bytes."""
    v = np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values, dtype=np.uint64).ravel()
    if v.size and int(v.max()) >= 2**bits:
        raise ValueError(f"value {int(v.max())} does not fit in {bits} bits")
    shifts = np.arange(bits, dtype=np.uint64)
    bitplanes = ((v[:, None] >> shifts) & np.uint64(1)).astype(np.uint8).ravel()
    return torch.from_numpy(np.packbits(bitplanes, bitorder="little").copy())


def unpack_uint(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    bitplanes = np.unpackbits(packed.cpu().numpy(), bitorder="little")[: n * bits]
    weights = np.uint64(1) << np.arange(bits, dtype=np.uint64)
    values = (bitplanes.reshape(n, bits).astype(np.uint64) * weights).sum(axis=1)
    return torch.from_numpy(values.astype(np.int64))


def pack_float(t: torch.Tensor, bits: int, group_size: int = 0) -> dict[str, torch.Tensor]:
    """The exported tensors of a float tensor; their bytes equal float_bytes(t.shape, ...)."""
    t = t.detach().float().cpu()
    if bits == 32:
        return {"": t.contiguous()}
    if bits == 16:
        return {"": t.to(torch.float16).contiguous()}
    grouped, _ = _grouped(t, group_size)
    scale16, lo16 = affine_grid(grouped, bits)
    codes = _codes(grouped, scale16, lo16, bits).reshape(grouped.shape[0], -1)
    _, cols = as_rows(tuple(t.shape))
    codes = codes[:, :cols].to(torch.int64)
    return {
        "codes": pack_uint(codes, bits),
        "scale": scale16.reshape(-1).contiguous(),
        "min": lo16.reshape(-1).contiguous(),
    }


def unpack_float(
    packed: dict[str, torch.Tensor], shape: tuple[int, ...], bits: int, group_size: int = 0
) -> torch.Tensor:
    if bits >= 16:
        return packed[""].float().reshape(shape)
    rows, cols = as_rows(shape)
    codes = unpack_uint(packed["codes"], bits, rows * cols).reshape(rows, cols).float()
    g = cols if group_size <= 0 else min(group_size, cols)
    group_of_col = torch.arange(cols) // g
    ngroups = groups_per_row(cols, group_size)
    scale = packed["scale"].float().reshape(rows, ngroups)[:, group_of_col]
    lo = packed["min"].float().reshape(rows, ngroups)[:, group_of_col]
    return (codes * scale + lo).reshape(shape)


def index_bytes(n: int) -> int:
    """Bytes of one column index: uint16 up to 65,536 columns, else int32."""
    return 2 if n <= 65536 else 4


def sparse_bytes(m: int, n: int, nnz: int, bits: int, group_size: int = 0) -> int:
    """Cheaper of CSR and bitmask for an m x n overlay holding nnz values at `bits`."""
    return specs_bytes(sparse_specs(m, n, nnz, bits, group_size))


def sparse_specs(m: int, n: int, nnz: int, bits: int, group_size: int = 0) -> Specs:
    """What pack_sparse writes for an m x n overlay of nnz values, without packing it."""
    out = prefixed("values", float_specs((nnz,), bits, group_size)) if nnz else {}
    if csr_index_bytes(m, n, nnz) <= bitmask_bytes(m, n):
        col = torch.int16 if index_bytes(n) == 2 else torch.int32  # uint16 through an int16 view
        out.update({"row_ptr": (torch.int32, (m + 1,)), "col": (col, (nnz,))})
    else:
        out["bitmask"] = (torch.uint8, (bitmask_bytes(m, n),))
    return out


def csr_index_bytes(m: int, n: int, nnz: int) -> int:
    return nnz * index_bytes(n) + (m + 1) * 4


def bitmask_bytes(m: int, n: int) -> int:
    return math.ceil(m * n / 8)


def pack_sparse(dense: torch.Tensor, mask: torch.Tensor, bits: int, group_size: int = 0) -> dict[str, torch.Tensor]:
    """Export an m x n overlay (values where mask) in the cheaper index format."""
    m, n = dense.shape
    mask = mask.bool().cpu()
    values = dense.detach().float().cpu()[mask]  # row-major order, as CSR and the bitmask both use
    out = prefixed("values", pack_float(values, bits, group_size)) if values.numel() else {}
    nnz = int(mask.sum())
    if csr_index_bytes(m, n, nnz) <= bitmask_bytes(m, n):
        rows, cols = mask.nonzero(as_tuple=True)
        row_ptr = torch.zeros(m + 1, dtype=torch.int32)
        row_ptr[1:] = torch.bincount(rows, minlength=m).cumsum(0).to(torch.int32)
        if index_bytes(n) == 2:  # uint16 stored through an int16 view (safetensors/torch agree on int16)
            col = torch.from_numpy(cols.numpy().astype(np.uint16).view(np.int16).copy())
        else:
            col = cols.to(torch.int32)
        out.update({"row_ptr": row_ptr, "col": col})
    else:
        out["bitmask"] = torch.from_numpy(np.packbits(mask.numpy().ravel(), bitorder="little").copy())
    return out


def unpack_sparse(
    packed: dict[str, torch.Tensor], m: int, n: int, bits: int, group_size: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dense m x n tensor, bool mask) from pack_sparse output."""
    if "bitmask" in packed:
        mask = torch.from_numpy(
            np.unpackbits(packed["bitmask"].numpy(), bitorder="little")[: m * n].astype(bool)
        ).reshape(m, n)
    else:
        row_ptr = packed["row_ptr"].long()
        col = packed["col"]
        col = torch.from_numpy(col.numpy().view(np.uint16).astype(np.int64)) if col.dtype == torch.int16 else col.long()
        rows = torch.repeat_interleave(torch.arange(m), row_ptr[1:] - row_ptr[:-1])
        mask = torch.zeros(m, n, dtype=torch.bool)
        mask[rows, col] = True
    nnz = int(mask.sum())
    dense = torch.zeros(m, n)
    if nnz:
        vals = {
            k[len("values.") :] if k.startswith("values.") else "": v
            for k, v in packed.items()
            if k.startswith("values")
        }
        dense[mask] = unpack_float(vals, (nnz,), bits, group_size)
    return dense, mask


def tensors_bytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


# --- the file: safetensors header ---------------------------------------------------------
# What the user holds is model.safetensors: 8 bytes of header length, a JSON header padded with
# spaces to a multiple of 8, then the tensor bytes. The header's size follows from the tensor
# names, dtypes and shapes alone (checked against files written by safetensors 0.8): tensors are
# laid out by dtype (this order, descending alignment), then by name; "__metadata__" comes first.
SAFETENSORS_DTYPES = {  # torch dtype -> (header name, rank in safetensors' layout order: higher first)
    torch.uint64: ("U64", 13),
    torch.int64: ("I64", 12),
    torch.float64: ("F64", 11),
    torch.float32: ("F32", 10),
    torch.uint32: ("U32", 9),
    torch.int32: ("I32", 8),
    torch.bfloat16: ("BF16", 7),
    torch.float16: ("F16", 6),
    torch.uint16: ("U16", 5),
    torch.int16: ("I16", 4),
    torch.int8: ("I8", 3),
    torch.uint8: ("U8", 2),
    torch.bool: ("BOOL", 1),
}


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _entry(name: str, spec: tuple[torch.dtype, tuple[int, ...]], start: int, end: int) -> bytes:
    dtype, shape = spec
    return (
        f'{_dumps(name)}:{{"dtype":{_dumps(SAFETENSORS_DTYPES[dtype][0])},'
        f'"shape":{_dumps([int(s) for s in shape])},"data_offsets":[{start},{end}]}}'
    ).encode("utf-8")


def _metadata_entry(metadata: dict[str, str] | None) -> bytes:
    return f"{_dumps('__metadata__')}:{_dumps(dict(metadata))}".encode("utf-8") if metadata else b""


def safetensors_header_bytes(specs: Specs, metadata: dict[str, str] | None = None) -> int:
    """Bytes before the tensor data of a safetensors file holding tensors name -> (dtype, shape)
    (and string `metadata`): the 8-byte length plus the padded JSON header."""
    order = sorted(specs, key=lambda name: (-SAFETENSORS_DTYPES[specs[name][0]][1], name))
    parts = [_metadata_entry(metadata)] if metadata else []
    offset = 0
    for name in order:
        size = spec_bytes(specs[name])
        parts.append(_entry(name, specs[name], offset, offset + size))
        offset += size
    header = len(b"{" + b",".join(parts) + b"}")
    return 8 + header + (-header) % 8


def safetensors_header_bound(specs: Specs, metadata: dict[str, str] | None, offset_digits: int) -> int:
    """An upper bound of safetensors_header_bytes that is a sum over the tensors (so a knapsack can
    add it up site by site): every offset written with `offset_digits` digits (true of any file
    whose tensors hold under 10**offset_digits bytes), a comma after every entry and the most
    padding. The layout order, which moves every later offset, no longer matters."""
    widest = 10 ** (offset_digits - 1)  # any number with that many digits
    entries = sum(len(_entry(name, spec, widest, widest)) + 1 for name, spec in specs.items())
    return 8 + 2 + len(_metadata_entry(metadata)) + 1 + entries + 7


def safetensors_file_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> int:
    """Size on disk of `safetensors.torch.save_file(tensors, path, metadata)`."""
    return safetensors_header_bytes(specs_of(tensors), metadata) + tensors_bytes(tensors)
