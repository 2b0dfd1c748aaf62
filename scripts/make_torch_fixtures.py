#!/usr/bin/env python3
"""Make the PyTorch-checkpoint test fixtures of `ssm` (tests/io/test_torch_checkpoint.cpp), without torch.

``torch.save`` (PyTorch >= 1.6) writes a zip archive of stored entries: ``<archive>/data.pkl``, a pickle
(protocol 2) of the state dict whose tensors reduce to ``torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, requires_grad, backward_hooks[, metadata])`` and whose storages are persistent ids
``('storage', torch.FloatStorage, key, location, numel)``; ``<archive>/data/<key>``, the storages'
little-endian bytes, each aligned to 64 bytes in the file; and small entries (``byteorder``, ``version``,
``.data/serialization_id``, ...). This script writes the same bytes with the standard library only:

* the pickle comes from Python's own ``pickle.Pickler`` (the one torch uses) over stand-ins: a fake
  ``torch`` module whose storage classes and ``_rebuild_tensor_v2`` carry torch's names, so that pickle
  emits the very GLOBAL opcodes torch's files hold, and a ``persistent_id`` that returns torch's tuple;
* the zip archive comes from a small writer below (stored entries, the 64-byte alignment padding that
  torch's writer puts in the local headers' extra field, and ZIP64 records on demand), whose output is
  checked with Python's ``zipfile`` module (directory, names, CRC-32s and contents).

What it makes, under ``<out>/torch/``:

* ``valid.bin``      -- protocol 2, folder ``archive/``, aligned; an ``OrderedDict`` with a ``_metadata``
                        attribute (as ``Module.state_dict()`` returns) holding fp32, fp16, bf16, f64, i64
                        and i32 tensors, a tied pair on one storage, a transposed view, views with a
                        storage offset, a scalar, an empty tensor, a ``_rebuild_parameter`` and a tensor
                        with the 7th (metadata) argument. The values are listed in the C++ test.
* ``valid_p4.bin``   -- protocol 4 (FRAME, STACK_GLOBAL, MEMOIZE, SHORT_BINUNICODE), folder
                        ``pytorch_model/``, a plain ``dict``, no ``byteorder`` entry, no alignment.
* ``valid_opcodes.bin`` -- a hand-assembled pickle of the opcodes that torch rarely writes (see
                        ``opcodes_pickle``).
* ``zip64.bin``      -- a small archive with ZIP64 records: every central-directory entry with ZIP64
                        fields (all three for data.pkl, only the offset for the storages), the ZIP64 end
                        of central directory record and locator, and 0xFFFF.. markers in the classic one.
* ``bad/*.bin``      -- malformed files, each broken in one way; the C++ test lists the message expected
                        from each.

Everything is deterministic: running it twice writes byte-identical files. From the repository root:

    python3 scripts/make_torch_fixtures.py --out tests/fixtures
"""

import argparse
import collections
import io
import os
import pickle
import struct
import sys
import types
import zipfile
import zlib

# ----------------------------------------------------------------------------------- torch stand-ins

_torch = types.ModuleType("torch")
_torch.__path__ = []  # a package, so that "torch._utils" is a submodule
_torch_utils = types.ModuleType("torch._utils")
_torch._utils = _torch_utils
if "torch" in sys.modules:
    sys.exit("make_torch_fixtures.py builds its own stand-in of torch; run it without torch imported")
sys.modules["torch"] = _torch
sys.modules["torch._utils"] = _torch_utils


def _named_function(module, name):
    def f(*args):
        raise RuntimeError("a stand-in: never called")

    f.__module__ = module
    f.__name__ = f.__qualname__ = name
    setattr(sys.modules[module], name, f)
    return f


_rebuild_tensor_v2 = _named_function("torch._utils", "_rebuild_tensor_v2")
_rebuild_parameter = _named_function("torch._utils", "_rebuild_parameter")


def _storage_class(name, fmt):
    cls = type(name, (), {"fmt": fmt})
    cls.__module__ = "torch"
    cls.__qualname__ = name
    setattr(_torch, name, cls)
    return cls


FloatStorage = _storage_class("FloatStorage", "f")
HalfStorage = _storage_class("HalfStorage", "H")  # given as raw 16-bit patterns
BFloat16Storage = _storage_class("BFloat16Storage", "H")
DoubleStorage = _storage_class("DoubleStorage", "d")
LongStorage = _storage_class("LongStorage", "q")
IntStorage = _storage_class("IntStorage", "i")
QUInt8Storage = _storage_class("QUInt8Storage", "B")  # exists in torch, but not in the reader's allow-list


class Storage:
    """A storage: its type (a class above), its key, its elements; `numel` and `data` may be forced."""

    def __init__(self, cls, key, values, numel=None, data=None, location="cpu"):
        self.cls, self.key, self.location = cls, key, location
        self.data = data if data is not None else struct.pack("<%d%s" % (len(values), cls.fmt), *values)
        self.numel = numel if numel is not None else len(values)


class Tensor:
    """A tensor: a view (offset, size, stride) of a storage, pickled as torch pickles tensors."""

    def __init__(self, storage, offset, size, stride, metadata=None, parameter=False, nargs=None):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)
        self.metadata, self.parameter, self.nargs = metadata, parameter, nargs

    def __reduce_ex__(self, protocol):
        if self.parameter:  # torch.nn.Parameter.__reduce_ex__
            inner = Tensor(self.storage, self.offset, self.size, self.stride)
            return (_rebuild_parameter, (inner, True, collections.OrderedDict()))
        args = (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())
        if self.metadata:
            args += (self.metadata,)
        if self.nargs is not None:
            args = args[: self.nargs]
        return (_rebuild_tensor_v2, args)


class TorchPickler(pickle.Pickler):
    """torch.serialization._save's pickler: storages become persistent ids."""

    def __init__(self, file, protocol, storages):
        super().__init__(file, protocol=protocol)
        self.storages = storages

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            self.storages.setdefault(obj.key, obj)
            return ("storage", obj.cls, obj.key, obj.location, obj.numel)
        return None


def torch_pickle(obj, protocol=2):
    """The data.pkl of `obj`, and the storages it names (key -> Storage)."""
    buf, storages = io.BytesIO(), {}
    TorchPickler(buf, protocol, storages).dump(obj)
    return buf.getvalue(), storages


# --------------------------------------------------------------------------------------- zip writer

DOS_TIME, DOS_DATE = 0, (2024 - 1980) << 9 | 1 << 5 | 1  # 2024-01-01 00:00:00


class ZipWriter:
    """Stored (or, for a malformed case, deflated) entries; optional 64-byte alignment and ZIP64."""

    def __init__(self, align=64, zip64=False):
        self.buf, self.entries, self.align, self.zip64 = bytearray(), [], align, zip64

    def add(self, name, data, deflate=False):
        name_b = name.encode()
        offset = len(self.buf)
        crc = zlib.crc32(data)
        payload = data
        method = 0
        if deflate:
            c = zlib.compressobj(9, zlib.DEFLATED, -15)
            payload = c.compress(data) + c.flush()
            method = 8
        extra = b""
        csize_field, usize_field = len(payload), len(data)
        if self.zip64:  # the local header's ZIP64 field holds both sizes
            extra = struct.pack("<HHQQ", 1, 16, len(data), len(payload))
            csize_field = usize_field = 0xFFFFFFFF
        if self.align:  # torch's writer pads the local extra field so that the data is aligned
            pad = (-(offset + 30 + len(name_b) + len(extra) + 4)) % self.align
            extra += struct.pack("<HH", 0x4246, pad) + b"Z" * pad
        self.buf += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45 if self.zip64 else 20, 0, method, DOS_TIME, DOS_DATE,
                                crc, csize_field, usize_field, len(name_b), len(extra))
        self.buf += name_b + extra + payload
        self.entries.append(dict(name=name_b, offset=offset, crc=crc, csize=len(payload), usize=len(data),
                                 method=method, flags=0, zip64_fields=None))
        return self.entries[-1]

    def finish(self):
        """The archive's bytes; also sets `cd_offset`, `cd_size` and each entry's `central` offset."""
        out = bytearray(self.buf)
        self.cd_offset = len(out)
        for i, e in enumerate(self.entries):
            usize, csize, offset, extra = e["usize"], e["csize"], e["offset"], b""
            if self.zip64:
                fields = e["zip64_fields"] or (("usize", "csize", "offset") if i == 0 else ("offset",))
                values = {"usize": usize, "csize": csize, "offset": offset}
                extra = struct.pack("<HH", 1, 8 * len(fields)) + b"".join(struct.pack("<Q", values[f]) for f in fields)
                usize = 0xFFFFFFFF if "usize" in fields else usize
                csize = 0xFFFFFFFF if "csize" in fields else csize
                offset = 0xFFFFFFFF if "offset" in fields else offset
            e["central"] = len(out)
            out += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 0x031E, 45 if self.zip64 else 20, e["flags"],
                               e["method"], DOS_TIME, DOS_DATE, e["crc"], csize, usize, len(e["name"]), len(extra), 0, 0,
                               0, 0o100644 << 16, offset)
            out += e["name"] + extra
        self.cd_size = len(out) - self.cd_offset
        n = len(self.entries)
        if self.zip64:
            z = len(out)
            out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, self.cd_size, self.cd_offset)
            out += struct.pack("<IIQI", 0x07064B50, 0, z, 1)
            out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
        else:
            out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, self.cd_size, self.cd_offset, 0)
        return bytes(out)


def checkpoint(state, archive="archive", protocol=2, align=64, zip64=False, byteorder="little",
               pickle_bytes=None, storages=None, omit=(), extra_entries=(), deflate_pickle=False, finish=True):
    """A torch.save archive of `state` (or of the given pickle and storages), as torch 2.x lays it out."""
    if pickle_bytes is None:
        pickle_bytes, storages = torch_pickle(state, protocol)
    w = ZipWriter(align=align, zip64=zip64)
    w.add(archive + "/data.pkl", pickle_bytes, deflate=deflate_pickle)
    w.add(archive + "/.format_version", b"1")
    w.add(archive + "/.storage_alignment", b"64")
    if byteorder is not None:
        w.add(archive + "/byteorder", byteorder.encode())
    for key in sorted(storages or {}):
        if key not in omit:
            w.add(archive + "/data/" + key, storages[key].data)
    w.add(archive + "/version", b"3\n")
    w.add(archive + "/.data/serialization_id", b"1234567890123456789012345678901234567890")
    for name, data in extra_entries:
        w.add(name, data)
    return w.finish() if finish else w


class CheckUnpickler(pickle.Unpickler):
    """Python's own unpickler over stand-ins: a tensor loads as ('tensor', storage key, offset, size, stride)."""

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, stride, *rest: ("tensor", storage[2], offset, size, stride)
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return lambda tensor, requires_grad, hooks: tensor
        if module == "torch" and name.endswith("Storage"):
            return name
        raise pickle.UnpicklingError("unexpected global %s.%s" % (module, name))

    def persistent_load(self, pid):
        return pid


def check_loads(data, archive, expected):
    """Python's unpickler reads the archive's data.pkl into `expected` (name -> tensor tuple)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        state = CheckUnpickler(io.BytesIO(z.read(archive + "/data.pkl"))).load()
    assert dict(state) == expected, state


def check_with_zipfile(data, expected_names):
    """Python's zipfile reads the archive: CRCs good, the expected entries present and stored."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.testzip() is None
        names = z.namelist()
        for n in expected_names:
            assert n in names, n
        for info in z.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            z.read(info)


# ------------------------------------------------------------------------------------------- valid


def f16(x):
    return struct.unpack("<H", struct.pack("<e", x))[0]


def valid_state():
    """The state dict of valid.bin (values repeated in tests/io/test_torch_checkpoint.cpp)."""
    s0 = Storage(FloatStorage, "0", [1.0, -2.5, 0.5, 3.0, 0.25, -8.0])
    s1 = Storage(HalfStorage, "1", [0x3C00, 0xC100, 0x7BFF, 0x0001, 0x8000])  # 1, -2.5, 65504, 2^-24, -0
    s2 = Storage(BFloat16Storage, "2", [0x3F80, 0xC020, 0x4049, 0xFF80])  # 1, -2.5, 3.140625, -inf
    s3 = Storage(FloatStorage, "3", [0.0, 1.0, -1.0, 2.0, -2.5, 1.5])
    s4 = Storage(FloatStorage, "4", [10.0 + k for k in range(10)])
    s5 = Storage(FloatStorage, "5", [7.25])
    s6 = Storage(LongStorage, "6", [0, 5, -3, 1 << 40])
    s7 = Storage(IntStorage, "7", [0, 7, -3, 100])
    s8 = Storage(DoubleStorage, "8", [0.1, -2.5])
    s9 = Storage(FloatStorage, "9", [1.0, 2.0, 3.0])
    s10 = Storage(FloatStorage, "10", [])
    state = collections.OrderedDict()
    state["w32"] = Tensor(s0, 0, (2, 3), (3, 1))
    state["w32_t"] = Tensor(s0, 0, (3, 2), (1, 3))  # the transpose: a non-contiguous view
    state["h16"] = Tensor(s1, 0, (5,), (1,))
    state["b16"] = Tensor(s2, 0, (2, 2), (2, 1), metadata={"note": 1})  # the 7th argument
    state["backbone.embeddings.weight"] = Tensor(s3, 0, (3, 2), (2, 1))
    state["lm_head.weight"] = Tensor(s3, 0, (3, 2), (2, 1))  # tied: the same storage
    state["tail"] = Tensor(s4, 6, (4,), (1,))  # offset 6, contiguous
    state["window"] = Tensor(s4, 1, (2, 2), (4, 2))  # offset 1, strided: elements 1, 3, 5, 7
    state["scalar"] = Tensor(s5, 0, (), ())
    state["ids"] = Tensor(s6, 0, (4,), (1,))
    state["i32"] = Tensor(s7, 0, (2, 2), (2, 1))
    state["f64"] = Tensor(s8, 0, (2,), (1,))
    state["param"] = Tensor(s9, 0, (3,), (1,), parameter=True)
    state["empty"] = Tensor(s10, 0, (0, 3), (3, 1))
    # Module.state_dict() sets this attribute; pickle writes it with BUILD.
    state._metadata = collections.OrderedDict([("", {"version": 1}), ("backbone", {"version": 2})])
    return state


def p4_state():
    s = Storage(FloatStorage, "0", [1.0, -2.5, 0.5, 3.0])
    h = Storage(HalfStorage, "1", [f16(0.5), f16(-2.5)])
    return {"a": Tensor(s, 0, (2, 2), (2, 1)), "a_t": Tensor(s, 0, (2, 2), (1, 2)), "h": Tensor(h, 0, (2,), (1,))}


def zip64_state():
    x = Storage(FloatStorage, "0", [1.0, -2.5, 0.5])
    y = Storage(BFloat16Storage, "1", [0x3F80, 0xC020])
    return collections.OrderedDict([("x", Tensor(x, 0, (3,), (1,))), ("y", Tensor(y, 0, (2,), (1,)))])


# --------------------------------------------------------------------------------------- malformed


class Asm:
    """A hand-assembled pickle."""

    def __init__(self, proto=2):
        self.b = bytearray(b"\x80" + bytes([proto]))

    def op(self, code, arg=b""):
        self.b += code + arg
        return self

    def str(self, s):
        raw = s.encode() if isinstance(s, str) else s
        return self.op(b"X", struct.pack("<I", len(raw)) + raw)

    def int(self, v):
        return self.op(b"J", struct.pack("<i", v))

    def glob(self, module, name):
        return self.op(b"c", module.encode() + b"\n" + name.encode() + b"\n")

    def storage(self, cls="FloatStorage", key="0", numel=2, location="cpu"):
        self.op(b"(").str("storage").glob("torch", cls).str(key).str(location).int(numel)
        return self.op(b"t").op(b"Q")

    def tensor(self, size=(2,), stride=(1,), offset=0, cls="FloatStorage", key="0", numel=2, nargs=6):
        self.glob("torch._utils", "_rebuild_tensor_v2").op(b"(")
        self.storage(cls, key, numel).int(offset)
        for t in (size, stride):
            self.op(b"(")
            for v in t:
                self.int(v)
            self.op(b"t")
        self.op(b"\x89").glob("collections", "OrderedDict").op(b")").op(b"R")
        if nargs == 7:
            self.op(b"N")
        self.op(b"t").op(b"R")
        return self

    def bytes(self):
        return bytes(self.b)


def opcodes_pickle():
    """A valid state dict assembled by hand from the opcodes torch's pickles rarely or never use: FRAME,
    LONG_BINPUT/LONG_BINGET, MEMOIZE, BINUNICODE8, SHORT_BINUNICODE, BININT2, TUPLE1/TUPLE3, NONE as the
    7th argument, _rebuild_parameter, and a BUILD state with a list (EMPTY_LIST, APPEND, APPENDS) holding
    BINFLOAT, NEWTRUE and NONE. Values: x = [1, -2.5]; y = [-2.5] (a parameter, offset 1);
    z = [1, -2.5] of shape (1, 1, 2)."""
    a = Asm(4)
    a.glob("collections", "OrderedDict").op(b"r", struct.pack("<I", 1000)).op(b")R").op(b"\x94").op(b"(")

    def tensor(offset, size, stride, nargs=6):
        a.glob("torch._utils", "_rebuild_tensor_v2").op(b"(").storage().op(b"M", struct.pack("<H", offset))
        for t in (size, stride):
            for v in t:
                a.op(b"K", bytes([v]))
            a.op({1: b"\x85", 3: b"\x87"}[len(t)])
        a.op(b"\x89").op(b"j", struct.pack("<I", 1000)).op(b")R")  # hooks: OrderedDict(), via LONG_BINGET
        if nargs == 7:
            a.op(b"N")
        a.op(b"tR")

    a.op(b"\x8d", struct.pack("<Q", 1) + b"x")
    tensor(0, (2,), (1,), nargs=7)
    a.op(b"\x8c\x01y").glob("torch._utils", "_rebuild_parameter")
    tensor(1, (1,), (1,))
    a.op(b"\x88}\x87R")  # (tensor, True, {}) -> _rebuild_parameter
    a.op(b"\x8c\x01z")
    tensor(0, (1, 1, 2), (7, 2, 1))
    a.op(b"u")
    a.op(b"}\x8c\x09_metadata]").op(b"M", struct.pack("<H", 300)).op(b"a(").op(b"G", struct.pack(">d", 0.5))
    a.op(b"\x88Nes").op(b"b.")
    body = a.bytes()[2:]
    return b"\x80\x04\x95" + struct.pack("<Q", len(body)) + body


def two_floats():
    return {"0": Storage(FloatStorage, "0", [1.0, -2.5])}


def one_tensor(**kw):
    """A state dict {'x': tensor(**kw)}, assembled."""
    return Asm().op(b"}").str("x").tensor(**kw).op(b"s").op(b".").bytes()


def malformed_cases(valid):
    """(file name, bytes) of each malformed file."""
    cases = []

    def add(name, data):
        cases.append((name, data))

    def with_pickle(name, pkl, storages=None, **kw):
        add(name, checkpoint(None, pickle_bytes=pkl, storages=two_floats() if storages is None else storages, **kw))

    def patched(data, offset, new):
        b = bytearray(data)
        b[offset:offset + len(new)] = new
        return bytes(b)

    base_state = {"x": Tensor(Storage(FloatStorage, "0", [1.0, -2.5]), 0, (2,), (1,))}

    # --- the zip archive
    add("empty.bin", b"")
    add("not_a_zip.bin", b"this is a text file, certainly not a zip archive\n")
    add("truncated.bin", valid[: len(valid) // 2])
    add("legacy_pickle.bin", pickle.dumps({"x": [1, 2, 3], "pad": "p" * 40}, protocol=2))
    w = checkpoint(base_state, finish=False)
    data = w.finish()
    add("broken_directory.bin", patched(data, w.entries[0]["central"], b"PK\x09\x09"))
    eocd = len(data) - 22
    add("cd_offset_wrong.bin", patched(data, eocd + 16, struct.pack("<I", w.cd_offset + 1)))
    add("zip64_no_locator.bin", patched(data, eocd + 16, b"\xff\xff\xff\xff"))

    w = checkpoint(base_state, finish=False)
    next(e for e in w.entries if e["name"].endswith(b"data/0"))["offset"] = 10_000_000
    add("entry_offset_past_end.bin", w.finish())

    w = checkpoint(base_state, finish=False)
    e = next(e for e in w.entries if e["name"].endswith(b"data/0"))
    e["usize"] = e["csize"] = 1_000_000
    add("entry_size_past_end.bin", w.finish())

    add("compressed.bin", checkpoint(base_state, deflate_pickle=True))
    w = checkpoint(base_state, finish=False)
    w.entries[0]["flags"] = 1
    add("encrypted.bin", w.finish())
    pkl, sto = torch_pickle(base_state)
    add("no_data_pkl.bin", checkpoint(None, pickle_bytes=pkl, storages=sto).replace(b"/data.pkl", b"/data.pk_"))
    w = checkpoint(base_state, finish=False)
    w.entries[0]["crc"] ^= 0x1
    add("bad_crc.bin", w.finish())
    add("duplicate_entry.bin", checkpoint(base_state, extra_entries=[("archive/version", b"3\n")]))
    add("big_endian.bin", checkpoint(base_state, byteorder="big"))
    w = checkpoint(base_state, finish=False)
    w.entries[0]["name"] = b"archive/data.pkX"  # the central directory's name only
    add("local_name_mismatch.bin", w.finish())
    w = checkpoint(base_state, zip64=True, align=0, finish=False)
    w.entries[1]["zip64_fields"] = ("usize", "csize", "offset")
    data = w.finish()
    central = w.entries[1]["central"]  # its ZIP64 extra field: announce 24 bytes, give 8
    add("zip64_short_extra.bin", patched(data, central + 46 + len(w.entries[1]["name"]) + 2, struct.pack("<H", 8)))

    # --- the pickle: dangerous globals, unknown opcodes, broken structure
    with_pickle("global_os_system.bin", Asm().glob("os", "system").str("echo pwned").op(b"\x85R.").bytes())
    with_pickle("global_builtins_eval.bin",
                Asm(4).op(b"\x8c\x08builtins").op(b"\x8c\x04eval").op(b"\x93").str("1+1").op(b"\x85R.").bytes())
    with_pickle("global_posix_system.bin", Asm().glob("posix", "system").str("id").op(b"\x85R.").bytes())
    with_pickle("global_quint8_storage.bin", one_tensor(cls="QUInt8Storage"))
    with_pickle("reduce_storage_class.bin", Asm().glob("torch", "FloatStorage").op(b")R.").bytes())
    with_pickle("unknown_opcode.bin", Asm().op(b"}").op(b"\xff").op(b".").bytes())
    with_pickle("unsupported_opcode.bin", Asm().op(b"(").glob("collections", "OrderedDict").op(b"i").bytes() + b".")
    with_pickle("stack_underflow.bin", Asm().op(b"N").op(b"\x86").op(b".").bytes())
    with_pickle("memo_out_of_range.bin", Asm().op(b"}").op(b"q\x00").op(b"h\x07").op(b"0.").bytes())
    full = pkl
    with_pickle("truncated_pickle.bin", full[: len(full) // 2])
    with_pickle("string_length_bomb.bin", Asm().op(b"}").op(b"X", b"\xf0\xff\xff\xff").op(b"abc").bytes())
    with_pickle("mark_bomb.bin", Asm().op(b"(" * 10000).bytes())
    with_pickle("trailing_after_stop.bin", full + b"N.")
    with_pickle("stop_with_two_values.bin", Asm().op(b"}").op(b"}").op(b".").bytes())
    with_pickle("protocol_6.bin", b"\x80\x06}.")
    with_pickle("long_too_big.bin", Asm().op(b"}").str("x").op(b"\x8a\x09" + b"\x01" * 9).op(b"s.").bytes())
    with_pickle("bad_utf8_key.bin", Asm().op(b"}").str(b"\xff\xfe").tensor().op(b"s.").bytes())
    with_pickle("setitems_odd.bin", Asm().op(b"}(").str("x").op(b"u.").bytes())
    with_pickle("build_on_tensor.bin", Asm().op(b"}").str("x").tensor().op(b"}b").op(b"s.").bytes())
    with_pickle("rebuild_wrong_arity.bin",
                Asm().op(b"}").str("x").glob("torch._utils", "_rebuild_tensor_v2").op(b"(").storage().int(0)
                .op(b"(J\x02\x00\x00\x00t(J\x01\x00\x00\x00t\x89tR").op(b"s.").bytes())
    with_pickle("pid_not_storage.bin",
                Asm().op(b"}").str("x").op(b"(").str("module").glob("torch", "FloatStorage").str("0").str("cpu")
                .int(2).op(b"tQ").op(b"s.").bytes())

    # --- the state dict
    with_pickle("not_a_dict.bin", Asm().op(b"]").op(b".").bytes())
    with_pickle("value_not_tensor.bin", Asm().op(b"}").str("x").int(1).op(b"s.").bytes())
    with_pickle("duplicate_key.bin", Asm().op(b"}(").str("x").tensor().str("x").tensor().op(b"u.").bytes())
    with_pickle("storage_type_conflict.bin",
                Asm().op(b"}(").str("x").tensor().str("y").tensor(cls="HalfStorage").op(b"u.").bytes())

    # --- tensors against their storages
    def state_of(storage, offset, size, stride):
        return {"x": Tensor(storage, offset, size, stride)}

    s10 = Storage(FloatStorage, "0", [float(k) for k in range(10)])
    s6 = Storage(FloatStorage, "0", [float(k) for k in range(6)])
    add("storage_key_missing.bin", checkpoint(state_of(s10, 0, (10,), (1,)), omit=("0",)))
    add("storage_too_small.bin", checkpoint(state_of(s10, 0, (4, 4), (4, 1))))
    add("stride_too_large.bin", checkpoint(state_of(s6, 0, (2, 3), (3, 4))))
    add("offset_too_large.bin", checkpoint(state_of(s10, 8, (3,), (1,))))
    add("storage_entry_size.bin", checkpoint(state_of(Storage(FloatStorage, "0", [], numel=6, data=b"\0" * 20),
                                                      0, (6,), (1,))))
    add("negative_size.bin", checkpoint(state_of(s10, 0, (-1, 3), (3, 1))))
    add("negative_stride.bin", checkpoint(state_of(s10, 9, (3,), (-1,))))
    add("negative_offset.bin", checkpoint(state_of(s10, -1, (3,), (1,))))
    add("shape_overflow.bin", checkpoint(state_of(s10, 0, (1 << 40, 1 << 40), (1, 1))))
    add("expanded_view.bin", checkpoint(state_of(Storage(FloatStorage, "0", [1.0]), 0, (4,), (0,))))
    return cases


# -------------------------------------------------------------------------------------------- main


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="tests/fixtures", help="the fixtures directory (default: %(default)s)")
    args = parser.parse_args()
    out = os.path.join(args.out, "torch")
    os.makedirs(os.path.join(out, "bad"), exist_ok=True)

    valid = checkpoint(valid_state())
    check_with_zipfile(valid, ["archive/data.pkl", "archive/byteorder", "archive/data/0", "archive/data/10"])
    with zipfile.ZipFile(io.BytesIO(valid)) as z:  # torch's alignment, from the local headers
        for info in z.infolist():
            name_len, extra_len = struct.unpack("<HH", valid[info.header_offset + 26:info.header_offset + 30])
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename
    check_loads(valid, "archive", {"w32": ("tensor", "0", 0, (2, 3), (3, 1)),
                                   "w32_t": ("tensor", "0", 0, (3, 2), (1, 3)),
                                   "h16": ("tensor", "1", 0, (5,), (1,)),
                                   "b16": ("tensor", "2", 0, (2, 2), (2, 1)),
                                   "backbone.embeddings.weight": ("tensor", "3", 0, (3, 2), (2, 1)),
                                   "lm_head.weight": ("tensor", "3", 0, (3, 2), (2, 1)),
                                   "tail": ("tensor", "4", 6, (4,), (1,)),
                                   "window": ("tensor", "4", 1, (2, 2), (4, 2)),
                                   "scalar": ("tensor", "5", 0, (), ()),
                                   "ids": ("tensor", "6", 0, (4,), (1,)),
                                   "i32": ("tensor", "7", 0, (2, 2), (2, 1)),
                                   "f64": ("tensor", "8", 0, (2,), (1,)),
                                   "param": ("tensor", "9", 0, (3,), (1,)),
                                   "empty": ("tensor", "10", 0, (0, 3), (3, 1))})
    write(os.path.join(out, "valid.bin"), valid)

    p4 = checkpoint(p4_state(), archive="pytorch_model", protocol=4, align=0, byteorder=None)
    assert b"\x95" in p4 and b"\x93" in p4  # FRAME, STACK_GLOBAL
    check_with_zipfile(p4, ["pytorch_model/data.pkl", "pytorch_model/data/1"])
    write(os.path.join(out, "valid_p4.bin"), p4)

    ops = checkpoint(None, pickle_bytes=opcodes_pickle(), storages=two_floats())
    check_with_zipfile(ops, ["archive/data.pkl", "archive/data/0"])
    check_loads(ops, "archive", {"x": ("tensor", "0", 0, (2,), (1,)), "y": ("tensor", "0", 1, (1,), (1,)),
                                 "z": ("tensor", "0", 0, (1, 1, 2), (7, 2, 1))})
    write(os.path.join(out, "valid_opcodes.bin"), ops)

    z64 = checkpoint(zip64_state(), zip64=True, align=0)
    check_with_zipfile(z64, ["archive/data.pkl", "archive/data/0", "archive/data/1"])
    assert b"PK\x06\x06" in z64 and b"PK\x06\x07" in z64
    write(os.path.join(out, "zip64.bin"), z64)

    names = set()
    for name, data in malformed_cases(valid):
        assert name not in names, name
        names.add(name)
        write(os.path.join(out, "bad", name), data)
    for stale in set(os.listdir(os.path.join(out, "bad"))) - names:
        os.remove(os.path.join(out, "bad", stale))
    print("wrote %s: valid.bin, valid_p4.bin, valid_opcodes.bin, zip64.bin and %d malformed files" % (out, len(names)))


if __name__ == "__main__":
    main()
