"""A hostile-but-ordinary corpus run through every command as a user runs it (a process each).

Every case asserts the promise the README makes on bad input: no traceback, exit 2 with one line
naming the problem (or exit 0 and a warning where the command can go on), nothing written at the
output path when the command fails, and the inputs it was given unchanged (sha256 before/after).
The inputs are small files the fixture generates, plus copies of the zoo's PP-OCRv3 models and the
embedded sample; the cases run two at a time, each forked from an interpreter that imported the CLI
once (``tests/cli_forker.py``), so the corpus stays a few minutes on two cores.
"""

# ruff: noqa: E501  (the corpus is a table: one command line per row reads better than wrapped lists)
from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import zoo_model_path

CASE_TIMEOUT_S = 180


@dataclass
class Case:
    """One command line. ``{w}`` is the input world, ``{o}`` this case's own (empty) output folder."""

    id: str
    argv: list[str]
    rc: int = 2
    #: a fragment the one-line error (or the warning, for rc 0) must contain
    says: str = ""
    #: files under ``{o}`` that must exist afterwards (rc 0 cases)
    writes: list[str] = field(default_factory=list)
    #: environment additions (``{w}``/``{o}`` expanded)
    env: dict[str, str] = field(default_factory=dict)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` but carries one tiny IDAT: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _model_5d(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 48, 192])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 2, 48, 192])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "five_d", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def _build_world(root: Path) -> Path:
    from ocrquant.data import sample_root

    w = root / "w"
    (w / "m").mkdir(parents=True)
    for name, zoo in (("cls", "ppocrv3-cls"), ("rec", "ppocrv3-rec"), ("det", "ppocrv3-det")):
        shutil.copy(zoo_model_path(zoo), w / "m" / f"{name}.onnx")
    cls_bytes = (w / "m" / "cls.onnx").read_bytes()
    (w / "m" / "empty.onnx").write_bytes(b"")
    (w / "m" / "garbage.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    (w / "m" / "text.onnx").write_text("this is not a model\n")
    (w / "m" / "trunc.onnx").write_bytes(cls_bytes[: len(cls_bytes) // 2])
    (w / "m" / "dir.onnx").mkdir()
    _model_5d(w / "m" / "five_d.onnx")
    calib = str(sample_root() / "rec")
    quantized = _run_cli(
        ["quantize", "-m", str(w / "m" / "cls.onnx"), "--task", "cls", "--calib-data", calib,
         "-o", str(w / "m" / "cls.int8.onnx"), "--method", "min_max", "--calib-size", "16"]
    )  # fmt: skip
    assert quantized.returncode == 0, quantized.stderr
    os.symlink(w / "m" / "cls.onnx", w / "m" / "cls_link.onnx")
    os.symlink(w / "m" / "det.onnx", w / "m" / "det_link.onnx")

    d = w / "d"
    shutil.copytree(sample_root() / "rec", d / "rec")
    shutil.copytree(sample_root() / "det", d / "det")
    small = d / "rec_small"
    (small / "images").mkdir(parents=True)
    lines = (d / "rec" / "gt.txt").read_text(encoding="utf-8-sig").splitlines()[:6]
    for line in lines:
        name = line.split(",")[0].strip()
        shutil.copy(d / "rec" / "images" / Path(name).name, small / "images" / Path(name).name)
    (small / "gt.txt").write_text("\n".join(lines) + "\n")
    first = Path(lines[0].split(",")[0].strip()).name

    def variant(name: str, edit) -> None:
        shutil.copytree(small, d / name)
        edit(d / name)

    variant("rec_corrupt", lambda p: (p / "images" / first).write_bytes(b"\x89PNG garbage"))
    variant("rec_bomb", lambda p: (p / "images" / first).write_bytes(_png_header_only(60000, 60000)))
    variant("rec_empty_img", lambda p: (p / "images" / first).write_bytes(b""))
    variant("rec_missing", lambda p: (p / "images" / first).unlink())
    variant(
        "rec_badline", lambda p: (p / "gt.txt").write_text((p / "gt.txt").read_text() + "no comma here\n")
    )
    variant("rec_empty_gt", lambda p: (p / "gt.txt").write_text(""))
    variant("rec_binary_gt", lambda p: (p / "gt.txt").write_bytes(np.random.default_rng(1).bytes(300)))
    shutil.copytree(d / "det", d / "det_missing_img")
    first_det = sorted((d / "det_missing_img" / "images").iterdir())[0]
    first_det.unlink()
    shutil.copytree(d / "det", d / "det_badgt")
    gt = sorted((d / "det_badgt" / "gt").iterdir())[0]
    gt.write_text("a,b,c,d,e,f,g,h,word\n")
    (d / "empty").mkdir()
    (w / "afile").write_text("a file where a folder is expected\n")

    x = w / "x"
    x.mkdir()
    np.save(x / "t.npy", np.random.default_rng(2).random((1, 3, 48, 192), dtype=np.float32))
    np.save(x / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (x / "bad.npy").write_bytes(b"not numpy")
    (x / "t.bin").write_bytes(np.zeros((1, 3, 48, 192), np.float32).tobytes())

    img = w / "img"
    img.mkdir()
    shutil.copy(sorted((d / "det" / "images").iterdir())[0], img / "photo.jpg")
    (img / "bad.jpg").write_bytes(b"\xff\xd8 not really")
    (img / "bomb.png").write_bytes(_png_header_only(60000, 60000))
    return w


def _run_cli(argv: list[str], env: dict[str, str] | None = None, timeout: float = CASE_TIMEOUT_S):
    return subprocess.run(
        [sys.executable, "-m", "ocrquant.cli.main", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


class _Forker:
    """One ``tests/cli_forker.py`` server: runs a command line in a process forked from it."""

    def __init__(self, streams: Path) -> None:
        self.streams = streams  # each command's stdout/stderr files, named by its case
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("cli_forker.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )

    def run(self, argv: list[str], env: dict[str, str], name: str) -> subprocess.CompletedProcess:
        """Like :func:`_run_cli`; raises ``TimeoutExpired`` when the command ran past its limit."""
        out, err = self.streams / f"{name}.out", self.streams / f"{name}.err"
        request = {
            "argv": argv,
            "env": env,
            "stdout": str(out),
            "stderr": str(err),
            "timeout": CASE_TIMEOUT_S,
        }
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        assert reply, f"the forker server died (exit {self.proc.poll()})"
        rc = json.loads(reply)["rc"]
        if rc is None:
            raise subprocess.TimeoutExpired(argv, CASE_TIMEOUT_S)
        return subprocess.CompletedProcess(
            argv, rc, out.read_text(errors="replace"), err.read_text(errors="replace")
        )

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _tree_hash(paths: list[Path]) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in paths:
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p] if p.is_file() else []
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


# ------------------------------------------------------------------------------------------ the corpus


def _cases() -> list[Case]:
    """The corpus, by cause. ``{w}``: the input world of :func:`_build_world`; ``{o}``: the case's own
    empty output folder."""
    M, REC, DET = "{w}/m", "{w}/d/rec_small", "{w}/d/det"
    CLS, I8 = f"{M}/cls.onnx", f"{M}/cls.int8.onnx"
    EVAL = ["eval", "-m", CLS, "--task", "cls", "-d", REC]
    EVAL_DET = ["eval", "-m", f"{M}/det.onnx", "--task", "det", "-d", DET]
    QUANT = ["quantize", "-m", CLS, "--task", "cls", "--calib-data", REC, "-o", "{o}/q.onnx"]
    OCR = ["ocr", "{w}/img/photo.jpg", "--det", f"{M}/det.onnx"]
    BENCH = ["bench", "-m", CLS, "--task", "cls"]
    PROFILE = ["profile", "-m", CLS, "--task", "cls", "-d", REC]
    RUN = ["run", "--task", "cls", "-m", CLS, "--data", REC, "--calib-data", "{w}/d/rec"]
    E2E = ["e2e", "-d", DET, "--det", f"{M}/det.onnx"]
    SENS = ["sensitivity", "-m", CLS, "--task", "cls", "--calib-data", REC]
    c: list[Case] = []

    # --- bad model files, every command that reads one
    for key in ("missing", "empty", "garbage", "text", "trunc", "dir", "five_d"):
        model = f"{M}/{'nope' if key == 'missing' else key}.onnx"
        says = Path(model).name
        # fmt: off
        for cid, argv in (
            ("eval-model", ["eval", "-m", model, "--task", "cls", "-d", REC]),
            ("quantize-model", ["quantize", "-m", model, "--task", "cls", "--calib-data", REC, "-o", "{o}/q.onnx"]),
            ("info-model", ["models", "info", model]),
            ("profile-model", ["profile", "-m", model, "--task", "cls", "-d", REC]),
            ("bench-model", ["bench", "-m", model, "--task", "cls", "--rounds", "2"]),
            ("dump-model", ["dump", "-m", model, "--task", "cls", "-d", REC, "-o", "{o}/dump"]),
            ("simulate-model", ["simulate", "-m", model, "--task", "cls", "-d", REC]),
            ("ocr-det", ["ocr", "{w}/img/photo.jpg", "--det", model]),
            ("run-int8", ["run", "--task", "cls", "-m", CLS, "--int8", model, "--data", REC, "--out", "{o}/run"]),
        ):  # fmt: on
            valid = cid == "info-model" and key == "five_d"  # a valid 5-D model: info describes it
            c.append(Case(f"{cid}-{key}", argv, says=says, rc=0 if valid else 2))

    # --- outputs that are inputs, inside an input dataset, folders, or unwritable
    outputs = {
        "same-as-model": (CLS, "cls.onnx"),
        "symlink-to-model": (f"{M}/cls_link.onnx", "cls_link.onnx"),
        "in-dataset": (f"{REC}/gt.txt", "gt.txt"),
        "inside-dataset": (f"{REC}/result.json", "rec_small"),
        "is-dir": ("{o}", "directory"),
        "parent-is-file": ("{w}/afile/out.json", "afile"),
    }
    for key, (out, says) in outputs.items():
        # ocr reads det.onnx (its cls and rec are the zoo's): that is the model it must not overwrite
        ocr_out, ocr_says = (
            (out.replace("cls", "det"), says.replace("cls", "det")) if "model" in key else (out, says)
        )
        reads_data = "dataset" not in key  # ocr and bench read no dataset: its files are no input of theirs
        # fmt: off
        table = [
            ("eval-out", [*EVAL, "-o", out], says, 2, []),
            ("quantize-out", [*QUANT[:-1], out, "--method", "min_max", "--calib-size", "4"], says, 2, []),
            ("profile-json", [*PROFILE, "--limit", "2", "--json", out], says, 2, []),
        ]
        if reads_data:
            table += [
                # --draw takes a folder too: the picture goes inside it
                ("ocr-draw", [*OCR, "--draw", ocr_out], "" if key == "is-dir" else ocr_says,
                 0 if key == "is-dir" else 2, ["photo_ocr.png"] if key == "is-dir" else []),
                ("ocr-json", [*OCR, "--json", ocr_out], ocr_says, 2, []),
                ("bench-json", [*BENCH, "--rounds", "2", "--json", out], says, 2, []),
            ]
        if key in ("is-dir", "parent-is-file"):  # npy2bin reads no model or dataset
            table.append(("npy2bin-out", ["npy2bin", "{w}/x/t.npy", out], says, 2, []))
        if key != "is-dir":  # a run folder may exist (it resumes)
            table.append(("run-out", [*RUN, "--out", out], says, 2, []))
        # fmt: on
        for cid, argv, expect, rc, writes in table:
            c.append(Case(f"{cid}-{key}", argv, rc=rc, says=expect, writes=writes))
    # fmt: off
    for cid, argv, says in (
        ("npy2bin-onto-input", ["npy2bin", "{w}/x/t.npy", "{w}/x/t.npy"], "t.npy"),
        ("ocr-draw-onto-photo", [*OCR, "--draw", "{w}/img/photo.jpg"], "photo.jpg"),
        ("bin2npy-onto-input", ["bin2npy", "{w}/x/t.bin", "{w}/x/t.bin", "--shape", "1,3,48,192"], "t.bin"),
        ("convert-onto-input", ["convert", "-f", "paddle", "--model", CLS, "-o", CLS], "cls.onnx"),
        ("synth-into-file", ["data", "synth", "--out", "{w}/afile", "--n-det", "1", "--n-rec", "1"], "afile"),
    ):  # fmt: on
        c.append(Case(cid, argv, says=says))

    # --- bad data: refused (rc 2) when the set cannot be read, skipped and named (rc 0) per bad sample
    for key, data, rc, says in (
        ("missing-dir", "{w}/d/nope", 2, "nope"),
        ("empty-dir", "{w}/d/empty", 2, "empty"),
        ("file", "{w}/afile", 2, "afile"),
        ("badline", "{w}/d/rec_badline", 2, "line 7"),
        ("empty-gt", "{w}/d/rec_empty_gt", 2, "rec_empty_gt"),
        ("binary-gt", "{w}/d/rec_binary_gt", 2, "rec_binary_gt"),
        ("corrupt-image", "{w}/d/rec_corrupt", 0, "skipped"),
        ("bomb-image", "{w}/d/rec_bomb", 0, "pixels"),
        ("empty-image", "{w}/d/rec_empty_img", 0, "skipped"),
        ("missing-image", "{w}/d/rec_missing", 0, "not found"),
    ):
        # fmt: off
        for cid, argv, writes in (
            ("eval-data", ["eval", "-m", CLS, "--task", "cls", "-d", data], []),
            ("quantize-data", ["quantize", "-m", CLS, "--task", "cls", "--calib-data", data, "-o", "{o}/q.onnx",
                               "--method", "min_max"], ["q.onnx"] if rc == 0 else []),
            ("profile-data", ["profile", "-m", CLS, "--task", "cls", "-d", data, "--runs", "1"], []),
            ("dump-data", ["dump", "-m", CLS, "--task", "cls", "-d", data, "-o", "{o}/dump", "--limit", "3"], []),
        ):  # fmt: on
            c.append(Case(f"{cid}-{key}", argv, rc=rc, says=says, writes=writes))
    # fmt: off
    for cid, argv, rc, says in (
        ("eval-strict-corrupt", ["eval", "-m", CLS, "--task", "cls", "-d", "{w}/d/rec_corrupt", "--strict"], 2, "corrupt"),
        ("quantize-strict-corrupt", ["quantize", "-m", CLS, "--task", "cls", "--calib-data", "{w}/d/rec_corrupt",
                                     "-o", "{o}/q.onnx", "--strict"], 2, "corrupt"),
        ("eval-det-missing-image", ["eval", "-m", f"{M}/det.onnx", "--task", "det", "-d", "{w}/d/det_missing_img",
                                    "--limit-side-len", "320"], 0, "not found"),
        ("eval-det-bad-gt", ["eval", "-m", f"{M}/det.onnx", "--task", "det", "-d", "{w}/d/det_badgt"], 2, "not numbers"),
        ("ocr-corrupt-image", ["ocr", "{w}/img/bad.jpg", "--det", f"{M}/det.onnx"], 2, "bad.jpg"),
        ("ocr-bomb-image", ["ocr", "{w}/img/bomb.png", "--det", f"{M}/det.onnx"], 2, "pixels"),
        ("ocr-folder-with-bad", ["ocr", "{w}/img", "--det", f"{M}/det.onnx", "--rec", f"{M}/rec.onnx", "--cls", CLS],
         0, "bomb.png"),
    ):  # fmt: on
        c.append(Case(cid, argv, rc=rc, says=says))

    # --- bad numbers: refused before any work, naming the option
    numbers = {
        "eval": (EVAL, [("--limit", "-1"), ("--threads", "-1"), ("--threads", "100000"), ("--batch-size", "0"),
                        ("--batch-size", "-4")]),
        "quantize": (QUANT, [("--threads", "100000"), ("--calib-size", "0"), ("--calib-size", "-5"),
                             ("--batch-size", "0"), ("--percentile", "0"), ("--percentile", "101"),
                             ("--percentile", "nan"), ("--max-drop", "-1"), ("--max-drop", "nan"),
                             ("--confidence", "1.5"), ("--val-size", "-1")]),
        "bench": (BENCH, [("--rounds", "0"), ("--rounds", "-3"), ("--warmup", "-1"), ("--threads", "100000")]),
        "profile": (PROFILE, [("--runs", "0"), ("--top", "-1"), ("--limit", "-1"), ("--threads", "-2")]),
        "eval-det": (EVAL_DET, [("--box-thresh", "2"), ("--unclip-ratio", "-1"), ("--limit-side-len", "0"),
                                ("--box-thresh", "nan")]),
        "ocr": (OCR, [("--drop-score", "1.5"), ("--cls-thresh", "-1"), ("--rec-batch", "0"), ("--threads", "100000")]),
        "run": (["run", "--task", "cls", "-m", CLS, "--out", "{o}/run"],
                [("--limit", "-1"), ("--calib-size", "0"), ("--threads", "100000"), ("--latency-inputs", "-1"),
                 ("--batch-size", "0"), ("--calib-batch-size", "0")]),
        "e2e": (E2E, [("--limit", "-1"), ("--threads", "100000"), ("--drop-score", "nan")]),
        "sensitivity": (SENS, [("--val-size", "0"), ("--threads", "100000"), ("--top", "-1")]),
    }  # fmt: skip
    for cmd, (base, pairs) in numbers.items():
        for opt, val in pairs:
            extra = ["--method", "percentile"] if opt == "--percentile" else []
            c.append(Case(f"{cmd}{opt}={val}", [*base, opt, val, *extra], says=opt))
    for shape in (["0", "3", "48", "192"], ["1", "3", "-5", "192"], ["1", "3", "48"]):
        c.append(Case(f"eval-input-shape-{'x'.join(shape)}", [*EVAL_DET, "--input-shape", *shape], says="input-shape"))
    c.append(Case("eval-det-input-shape-odd", [*EVAL_DET, "--input-shape", "1", "3", "33", "47"], says="input-shape"))
    # run pins the model's input: a size the model already fixes otherwise is refused before any work
    c.append(Case("run-input-shape-channels", ["run", "--task", "cls", "-m", CLS, "--out", "{o}/run",
                                               "--input-shape", "1", "1", "48", "192"], says="axis 1 is fixed to 3"))
    c.append(Case("sensitivity-input-shape-negative", [*SENS, "--input-shape", "1", "3", "-5", "192"], says="input-shape"))
    c.append(Case("run-det-input-shape-odd", ["run", "--task", "det", "--out", "{o}/run",
                                              "--input-shape", "1", "3", "500", "896"], says="32"))
    # run --int8 scores a given INT8 model: a float model there, or a pin it cannot take, is refused
    c.append(Case("run-int8-is-float", ["run", "--task", "cls", "-m", CLS, "--int8", CLS, "--data", REC,
                                        "--out", "{o}/run"], says="no quantization nodes"))
    c.append(Case("run-int8-with-input-shape", ["run", "--task", "cls", "-m", CLS, "--int8", I8, "--data", REC,
                                                "--out", "{o}/run", "--input-shape", "1", "3", "48", "192"],
                  says="--input-shape"))
    c.append(Case("run-int8-several-tasks-bare", ["run", "-m", f"cls={CLS}", "--int8", I8, "--out", "{o}/run"],
                  says="--int8 TASK=VALUE"))
    c.append(Case("profile-unknown-backend", [*PROFILE, "--backend", "tflite"], says="--backend tflite"))
    c.append(Case("simulate-json-without-compare", ["simulate", "-m", CLS, "--json", "{o}/s.json"], says="--compare"))

    # --- tensors (npy / raw bin), names that do not exist, other runs of the chain
    # fmt: off
    for cid, argv, says in (
        ("npy2bin-pickled", ["npy2bin", "{w}/x/obj.npy", "{o}/t.bin"], "obj.npy"),
        ("npy2bin-garbage", ["npy2bin", "{w}/x/bad.npy", "{o}/t.bin"], "bad.npy"),
        ("npy2bin-missing", ["npy2bin", "{w}/x/nope.npy", "{o}/t.bin"], "nope.npy"),
        ("bin2npy-wrong-shape", ["bin2npy", "{w}/x/t.bin", "{o}/t.npy", "--shape", "1,3,48,100"], "t.bin"),
        ("bin2npy-negative-shape", ["bin2npy", "{w}/x/t.bin", "{o}/t.npy", "--shape", "1,-3,48,192"], "shape"),
        ("bin2npy-bad-dtype", ["bin2npy", "{w}/x/t.bin", "{o}/t.npy", "--shape", "1,3,48,192", "--dtype", "complex512"],
         "dtype"),
        ("simulate-bin-shape-mismatch", ["simulate", "-m", CLS, "--input-bin", "{w}/x/t.bin", "--bin-shape", "1,3,48,100"],
         "t.bin"),
        ("simulate-bin-wrong-model-shape", ["simulate", "-m", CLS, "--task", "cls", "--input-bin", "{w}/x/t.bin",
                                            "--bin-shape", "1,4,48,144"], "shape"),
        ("quantize-exclude-unknown", [*QUANT, "--method", "min_max", "--exclude", "no_such_layer"], "no_such_layer"),
        ("quantize-int16-unknown", [*QUANT, "--method", "min_max", "--int16", "no_such_layer"], "no_such_layer"),
        ("quantize-method-unknown", [*QUANT, "--method", "magic"], "magic"),
        # auto (the default method) refuses a non-.onnx output before its search, writing nothing
        ("quantize-auto-out-not-onnx", [*QUANT[:-1], "{o}/q.txt", "--calib-size", "4"], ".onnx"),
        ("quantize-auto-out-onto-model", [*QUANT[:-1], CLS, "--calib-size", "4"], "also an input"),
        ("quantize-target-unknown", [*QUANT, "--target", "tpu9"], "tpu9"),
        ("eval-backend-unknown", [*EVAL, "--backend", "cuda9"], "cuda9"),
        ("eval-task-unknown", ["eval", "-m", CLS, "--task", "ner", "-d", REC], "ner"),
        ("eval-format-unknown", [*EVAL, "--format", "coco"], "coco"),
        ("eval-char-dict-missing", ["eval", "-m", f"{M}/rec.onnx", "--task", "rec", "-d", REC, "--char-dict",
                                    "{w}/nope.txt"], "nope.txt"),
        ("eval-char-dict-binary", ["eval", "-m", f"{M}/rec.onnx", "--task", "rec", "-d", REC, "--char-dict",
                                   "{w}/m/garbage.onnx"], "garbage.onnx"),
        ("eval-wrong-task", ["eval", "-m", f"{M}/det.onnx", "--task", "rec", "-d", REC], "det.onnx"),
        ("models-fetch-unknown", ["models", "fetch", "nope-model"], "nope-model"),
        ("run-unknown-task", ["run", "--task", "ner", "--out", "{o}/run"], "ner"),
        ("compare-sim-from-dump", ["compare", "--from-dump", "{w}/m", "--sim"], "--sim"),
        ("compare-from-dump-not-a-dump", ["compare", "--from-dump", "{w}/m"], "index.json"),
        ("e2e-data-missing", ["e2e", "-d", "{w}/d/nope", "--det", f"{M}/det.onnx"], "nope"),
        ("e2e-data-is-rec", ["e2e", "-d", REC, "--det", f"{M}/det.onnx"], "rec_small"),
        ("e2e-det-garbage", ["e2e", "-d", DET, "--det", f"{M}/garbage.onnx"], "garbage.onnx"),
        ("e2e-out-onto-model", [*E2E, "-o", f"{M}/det.onnx"], "det.onnx"),
        ("e2e-out-in-dataset", [*E2E, "-o", f"{DET}/result.json"], "det"),
        ("e2e-lexicon-unknown", [*E2E, "--lexicon", "klingon"], "klingon"),
        ("eval-e2e-bad-stage", ["eval", "--task", "e2e", "-d", DET, "-m", "box=x.onnx"], "box=x.onnx"),
        ("eval-e2e-det-garbage", ["eval", "--task", "e2e", "-d", DET, "-m", f"det={M}/garbage.onnx"], "garbage"),
        ("sensitivity-model-garbage", ["sensitivity", "-m", f"{M}/garbage.onnx", "--task", "cls", "--calib-data", REC],
         "garbage"),
        ("sensitivity-calib-missing", ["sensitivity", "-m", CLS, "--task", "cls", "--calib-data", "{w}/d/nope"], "nope"),
        ("sensitivity-json-onto-model", [*SENS, "--json", CLS], "cls.onnx"),
        ("sensitivity-plot-is-dir", [*SENS, "--plot", "{o}"], "directory"),
        ("sensitivity-work-dir-is-file", [*SENS, "--work-dir", "{w}/afile"], "afile"),
        ("ncnn-convert-garbage", ["ncnn", "convert", "-m", f"{M}/garbage.onnx"], "garbage"),
        ("ncnn-convert-out-onto-model", ["ncnn", "convert", "-m", f"{M}/det.onnx", "-o", f"{M}/det.onnx"], "det.onnx"),
        ("ncnn-quantize-out-onto-model", ["ncnn", "quantize", "-m", f"{M}/det.onnx", "--calib-data", DET,
                                          "-o", f"{M}/det.onnx"], "det.onnx"),
        ("ncnn-quantize--calib-size=0", ["ncnn", "quantize", "-m", f"{M}/det.onnx", "--calib-data", DET,
                                         "-o", "{o}/q.param", "--calib-size", "0"], "--calib-size"),
        ("ncnn-run-out-is-file", ["ncnn", "run", "-m", f"{M}/det.onnx", "-d", DET, "--calib-data", DET,
                                  "--out", "{w}/afile"], "afile"),
        ("ncnn-run--limit=-1", ["ncnn", "run", "-m", f"{M}/det.onnx", "-d", DET, "--calib-data", DET,
                                "--out", "{o}/r", "--limit", "-1"], "--limit"),
    ):  # fmt: on
        c.append(Case(cid, argv, says=says))

    # --- analysis on ocrquant's own INT8 model (valid input: each once failed or refused it)
    # fmt: off
    for cid, argv, writes in (
        ("compare-int8", ["compare", CLS, I8, "-d", REC, "--task", "cls", "--limit", "2"], []),
        ("compare-int8-sim", ["compare", CLS, I8, "-d", REC, "--task", "cls", "--limit", "1", "--sim"], []),
        ("dump-quant-int8", ["dump", "-m", CLS, "--quant", I8, "-d", REC, "--task", "cls", "-o", "{o}/d"],
         ["d/index.json"]),
        ("simulate-int8-compare", ["simulate", "-m", I8, "-d", REC, "--task", "cls", "--limit", "1", "--compare"], []),
        ("simulate-int8-bin", ["simulate", "-m", I8, "--input-bin", "{w}/x/t.bin", "--bin-shape", "1,3,48,192",
                               "--output-bin", "{o}/y.bin"], ["y.bin"]),
        ("profile-int8", ["profile", "-m", CLS, "--compare", I8, "-d", REC, "--task", "cls", "--limit", "1"], []),
        ("eval-int8", ["eval", "-m", I8, "-d", REC], []),
    ):  # fmt: on
        c.append(Case(cid, argv, rc=0, writes=writes))

    # bench: a pair the backend cannot load is a row with its reason (tensorrt: no CUDA GPU here)
    c.append(Case("bench-unsupported-pair-row", [*BENCH, "--rounds", "2", "--backend", "onnxruntime", "--backend", "tensorrt"], rc=0, says="unsupported"))
    c.append(Case("bench-nothing-loads", [*BENCH, "--rounds", "2", "--backend", "tensorrt"], says="tensorrt"))

    # --- environment
    c.append(Case("home-is-file", ["models", "list"], says="afile", env={"OCRQUANT_HOME": "{w}/afile"}))
    c.append(
        Case("home-unwritable-fetch", ["models", "fetch", "ppocrv3-cls"], says="afile",
             env={"OCRQUANT_HOME": "{w}/afile/sub"})
    )  # fmt: skip
    return c


CASES = _cases()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_world(tmp_path_factory.mktemp("hostile"))


def _check(case: Case, w: Path, out_root: Path, forkers: queue.Queue[_Forker]) -> str | None:
    """Run one case; the reason it broke the promise, or None."""
    o = out_root / case.id
    o.mkdir(parents=True)

    def expand(s: str) -> str:
        return s.replace("{w}", str(w)).replace("{o}", str(o))

    argv = [expand(a) for a in case.argv]
    inputs = [Path(a) for a in argv if a.startswith(str(w)) and Path(a).exists()]
    before = _tree_hash(inputs)
    forker = forkers.get()
    try:
        proc = forker.run(argv, {k: expand(v) for k, v in case.env.items()}, case.id)
    except subprocess.TimeoutExpired:
        return f"hung (> {CASE_TIMEOUT_S} s)"
    finally:
        forkers.put(forker)
    err = proc.stderr
    problems = []
    if "Traceback" in err:
        problems.append("traceback: " + err.strip().splitlines()[-1][:200])
    if proc.returncode != case.rc:
        problems.append(f"exit {proc.returncode}, expected {case.rc}: {err.strip()[-300:]!r}")
    if case.rc == 2:
        error_lines = [line for line in err.splitlines() if line.startswith("error:")]
        if len(error_lines) != 1:
            problems.append(f"{len(error_lines)} 'error:' lines in {err.strip()[-300:]!r}")
        left = [str(p.relative_to(o)) for p in o.rglob("*")]
        if left:
            problems.append(f"wrote {left} on failure")
    if case.says and case.says.lower() not in (err + proc.stdout).lower():
        problems.append(f"output does not mention {case.says!r}: {err.strip()[-300:]!r}")
    for rel in case.writes:
        if not (o / rel).exists():
            problems.append(f"did not write {rel}")
    after = _tree_hash(inputs)
    if after != before:
        changed = [k for k in set(before) | set(after) if before.get(k) != after.get(k)]
        problems.append(f"modified inputs {changed}")
    return "; ".join(problems) or None


def test_corpus_is_large() -> None:
    assert len(CASES) >= 150, len(CASES)
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


def test_hostile_corpus(world: Path, tmp_path: Path) -> None:
    """Every case keeps the promise; the whole world of inputs is unchanged at the end."""
    before = _tree_hash([world])
    only = os.environ.get("OCRQUANT_HOSTILE_ONLY")
    cases = [c for c in CASES if not only or only in c.id]
    workers = max(2, os.cpu_count() or 2)
    streams = tmp_path / "_streams"  # beside the cases' output folders, never inside one
    streams.mkdir()
    forkers: queue.Queue[_Forker] = queue.Queue()
    for _ in range(workers):
        forkers.put(_Forker(streams))
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda case: (case.id, _check(case, world, tmp_path, forkers)), cases))
    finally:
        while not forkers.empty():
            forkers.get().close()
    failures = [f"{cid}: {why}" for cid, why in results if why]
    after = _tree_hash([world])
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if changed:
        failures.append(f"the input world changed: {changed}")
    report = os.environ.get("OCRQUANT_HOSTILE_REPORT")
    if report:
        Path(report).write_text("\n".join(failures) + "\n")
    assert not failures, f"{len(failures)} of {len(cases)} cases broke the promise:\n" + "\n".join(failures)


def test_compare_from_a_fresh_dump_of_own_int8_model(world: Path, tmp_path: Path) -> None:
    """``dump --quant`` then ``compare --from-dump`` on ocrquant's own INT8 model (once refused)."""
    rec = str(world / "d" / "rec_small")
    dump = tmp_path / "dump"
    made = _run_cli(
        ["dump", "-m", str(world / "m" / "cls.onnx"), "--quant", str(world / "m" / "cls.int8.onnx"),
         "-d", rec, "--task", "cls", "-o", str(dump)]
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-500:]
    compared = _run_cli(["compare", "--from-dump", str(dump), "--json", str(tmp_path / "c.json")])
    assert compared.returncode == 0, compared.stderr[-500:]
    import json

    layers = json.loads((tmp_path / "c.json").read_text())["layers"]
    assert len(layers) > 20
    assert all(-1.0 <= layer["cosine"] <= 1.0 + 1e-9 for layer in layers)
