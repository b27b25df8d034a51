"""Write ``docs/results.md``: every figure the README quotes, each table with the command that made it
and the host it ran on.

It measures nothing itself; it reads what these commands leave behind (each resumable, so running one
again re-times only what is not saved):

  python benchmarks/icdar2015.py --chain v6 --out runs/v6      # PP-OCRv6 small chain, ICDAR2015
  python benchmarks/icdar2015.py --chain v3 --out runs/v3      # PP-OCRv3 chain, ICDAR2015
  python benchmarks/seed_table.py --out runs/seed              # the vendor's NPU workflow
  python benchmarks/speed.py                                   # per backend, batch 1 and 8
  python benchmarks/first_command.py --out runs/first-command  # the README's first command, timed
  python benchmarks/pipeline.py                                # whole chain against rapidocr 3.10
  python benchmarks/openvino_accuracy.py                       # INT8 in OpenVINO vs onnxruntime, full sets
  python benchmarks/openvino_target.py                         # --target openvino: speed, accuracy
  python benchmarks/quantize_time.py --workers 0 2             # ocrquant quantize's own time
  python benchmarks/results.py                                 # -> docs/results.md, README's table

  python benchmarks/denormals.py                               # denormal weights, onnxruntime FP32

A section whose artefact is not in this checkout keeps the text it has in ``docs/results.md`` (made
by that command on the host it names); one that was never measured says which command makes it. So
a host that runs one command refreshes that section and leaves the others as they were measured.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from ocrquant.errors import OcrQuantError, run_script
from ocrquant.fileio import write_text_atomic

CHAIN_TITLES = {
    "v6": "PP-OCRv6 small chain on ICDAR2015 (the embedded default's models)",
    "v3": "PP-OCRv3 chain on ICDAR2015 (the seed's models)",
}
MISSING = "Not measured here: "  # how a section starts whose artefact this checkout lacks
METRIC_NAMES = {"acc": "acc", "norm_edit_sim": "1-NED", "hmean": "hmean", "precision": "P", "recall": "R"}


def relative(command: str) -> str:
    """A recorded command with this checkout's parent folder written as ``..`` (as a reader types it)."""
    return command.replace(str(Path.cwd().resolve().parent) + "/", "../")


def load_text(s: dict) -> str:
    """The 1-minute load average the script saw at its start and end: above the thread count, other
    work shared the CPU and latencies are slower, their ratios noisier."""
    load = s.get("load_average")
    if not load:
        return ""
    return f" Load average (1 min) at start / end: {' / '.join(f'{x:.1f}' for x in load)}."


def pt(x: float) -> str:
    return f"{100 * x:+.2f}"


def recipe_text(recipe: dict) -> str:
    """The recipe a sidecar records, short: ``mse + bias_correction``."""
    method = recipe.get("method") or "?"
    options = recipe.get("method_options") or {}
    if method == "percentile" and "percentile" in options:
        method = f"percentile {options['percentile']}"
    algos = [a for a in recipe.get("algorithms") or [] if a not in ("hs_floor", "weight_width")]
    return " + ".join([method, *algos])


def accuracy_cells(rows: list[dict]) -> tuple[str, str, str]:
    """FP32, INT8 and the deltas with their paired 95 % intervals, metrics joined by commas."""
    shown = [r for r in rows if r["metric"] not in ("precision", "recall")] or rows
    fp32 = ", ".join(f"{METRIC_NAMES[r['metric']]} {r['fp32']:.4f}" for r in shown)
    int8 = ", ".join(f"{METRIC_NAMES[r['metric']]} {r['int8']:.4f}" for r in shown)
    deltas = []
    for r in shown:
        ci = f" ({pt(r['low'])} to {pt(r['high'])})" if r["low"] is not None else ""
        deltas.append(f"{METRIC_NAMES[r['metric']]} {pt(r['int8'] - r['fp32'])} pt{ci}")
    return fp32, int8, ", ".join(deltas)


def speed_cell(bench: list[dict]) -> str:
    """INT8 speed-up over FP32 per benchmarked shape (``48x320 b1 1.84x, b8 2.25x``)."""
    cells = []
    for b in bench:
        if b["precision"] == "fp32":
            continue
        flushed = b.get("speedup_vs_flushed")
        # a float file with denormal weights: the speed-up over it with them zeroed, too
        extra = f" ({flushed:.2f}x over FP32 with its denormal weights zeroed)" if flushed else ""
        cells.append(f"{b['shape']} {b['speedup']:.2f}x{extra}")
    return ", ".join(cells)


def size_cell(bench: list[dict]) -> str:
    sizes = {b["precision"]: b["size_mb"] for b in bench}
    fp32 = sizes.get("fp32")
    int8 = next((v for k, v in sizes.items() if k != "fp32"), None)
    return f"{fp32:.2f} -> {int8:.2f}" if fp32 is not None and int8 is not None else ""


def short_host(host: str) -> str:
    """``AMD EPYC, 2 cores, AVX2 AVX512 AVX512-VNNI`` from the full machine description."""
    return ", ".join(host.split(", ")[:3])


def given_or_default(t: dict) -> str:
    """Whether the task's INT8 model came from ``ocrquant quantize``'s defaults or from a recipe given
    on its command line."""
    command = t.get("quantize_command") or ""
    return "recipe given" if "--method" in command or "--algorithms" in command else "defaults"


def section_artefact(heading: str, path: Path, command: str) -> tuple[list[str], dict | None]:
    """A section's heading lines and its artefact's JSON; without the file, the heading and the
    command that writes it, which is then the whole section."""
    lines = [heading, ""]
    if not path.is_file():
        return [*lines, f"{MISSING}`{command}`.", ""], None
    return lines, json.loads(path.read_text())


def headline_rows(chain: str, folder: Path) -> list[str]:
    """The README's results table rows for one chain: per model the primary metric FP32 -> INT8 with
    its interval, the speed-up at batch 1 (and 8), the size, the host."""
    path = folder / "summary.json"
    if not path.is_file():
        return []
    s = json.loads(path.read_text())
    rows = []
    for t in s["tasks"].values():
        primary = next(r for r in t["accuracy"] if r["low"] is not None)
        name = METRIC_NAMES[primary["metric"]]
        ci = f"{pt(primary['int8'] - primary['fp32'])} ({pt(primary['low'])} to {pt(primary['high'])})"
        model = t["model"] if given_or_default(t) == "defaults" else f"{t['model']} (recipe given)"
        rows.append(
            f"| {model} | {t['test']} ({t['samples']}) | {name} {primary['fp32']:.4f} "
            f"| {primary['int8']:.4f} | {ci} | onnxruntime: {speed_cell(t['bench'])} "
            f"| {size_cell(t['bench'])} | {short_host(s['host'])} |"
        )
    return rows


SUMMARY_HEADING = "## Summary (the README's table)"


def earlier_rows(chain: str, previous: dict[str, list[str]]) -> list[str]:
    """The earlier summary's rows of ``chain``'s models (``ppocrv6-...``), for a chain whose artefacts this
    checkout lacks: one chain can be measured again on one host without dropping the other's rows."""
    return [line for line in previous.get(SUMMARY_HEADING, []) if line.startswith(f"| ppocr{chain}-")]


def headline_table(args: argparse.Namespace, previous: dict[str, list[str]]) -> list[str]:
    """The summary table, the one the README carries between its results markers."""
    measured = {chain: headline_rows(chain, folder) for chain, folder in (("v6", args.v6), ("v3", args.v3))}
    if not any(measured.values()):  # nothing measured in this checkout: the section stays as it was
        return []
    return [
        "| model | test set | FP32 | INT8 | delta, pt (95 % interval) | INT8 speed-up over FP32 "
        "| MB FP32 -> INT8 | host |",
        "|---|---|---|---|---|---|---|---|",
        *(row for chain, rows in measured.items() for row in rows or earlier_rows(chain, previous)),
    ]


def headline_section(args: argparse.Namespace, previous: dict[str, list[str]]) -> list[str]:
    table = headline_table(args, previous)
    if not table:
        return [SUMMARY_HEADING, "", f"{MISSING}`python benchmarks/icdar2015.py`.", ""]
    return [
        SUMMARY_HEADING,
        "",
        "ICDAR2015 test sets, calibrated on the training sets, one INT8 model per task (`ocrquant quantize` "
        "defaults unless the row says the recipe was given); from the chain sections below.",
        "",
        *table,
        "",
    ]


BEGIN, END = "<!-- results.py: begin -->", "<!-- results.py: end -->"


def update_readme(readme: Path, table: list[str]) -> None:
    """Rewrite the README's table between its markers (written atomically; the rest untouched)."""
    text = readme.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise OcrQuantError(f"no {BEGIN} ... {END} markers", readme)
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    write_text_atomic(readme, head + BEGIN + "\n" + "\n".join(table) + "\n" + END + tail)


def search_phases(folder: Path, tasks: dict) -> list[str]:
    """Per task, the wall time of each phase of ``auto`` its sidecar records (range candidates, qdq-stage
    algorithms, each validated algorithm's trial); tasks whose sidecar predates the record are left out."""
    out = []
    for task in tasks:
        sidecar = folder / f"{task}.int8.quant.json"
        seconds = (
            json.loads(sidecar.read_text()).get("method_search", {}).get("seconds")
            if sidecar.is_file()
            else None
        )
        if seconds:
            out.append(f"{task}: " + ", ".join(f"{k} {v}" for k, v in seconds.items() if k != "executor"))
    return out


def chain_section(chain: str, folder: Path) -> list[str]:
    """One chain's table (per task: recipe, FP32, INT8, delta, speed, size, quantize time) and e2e."""
    path = folder / "summary.json"
    command = f"python benchmarks/icdar2015.py --chain {chain} --out {folder}"
    lines, s = section_artefact(f"## {CHAIN_TITLES[chain]}", path, command)
    if s is None:
        return lines
    lines += [
        f"Command: `{s['command']}`. Host: {s['host']}; `ocrquant bench`, FP32 and INT8 interleaved, "
        f"{s.get('threads', 2)} threads, onnxruntime spinning off.{load_text(s)} Calibrated on det_train / "
        "rec_train; "
        "recipes chosen on held-out training images; delta = INT8 - FP32 on the test set with its paired "
        "95 % bootstrap interval.",
        "",
        "| task | model, test set | recipe (`ocrquant quantize` time) | FP32 | INT8 | delta (95 % interval) "
        "| INT8 speed-up | MB FP32 -> INT8 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task, t in s["tasks"].items():
        fp32, int8, delta = accuracy_cells(t["accuracy"])
        took = f"{t['quantize_seconds'] / 60:.1f} min" if t.get("quantize_seconds") else "time not recorded"
        took = f"{given_or_default(t)}, {took}"
        lines.append(
            f"| {task} | {t['model']}, {t['test']} ({t['samples']}) | {recipe_text(t['recipe'])} ({took}) "
            f"| {fp32} | {int8} | {delta} | {speed_cell(t['bench'])} | {size_cell(t['bench'])} |"
        )
    made = [
        f"{k} `{relative(t['quantize_command'])}`" for k, t in s["tasks"].items() if t.get("quantize_command")
    ]
    if made:
        lines += ["", "The INT8 models: " + "; ".join(made) + "."]
    phases = search_phases(folder, s["tasks"])
    if phases:
        lines += ["", "Where `auto`'s time went (seconds, from each sidecar's `method_search.seconds`): "
                  + "; ".join(phases) + "."]  # fmt: skip
    e2e = s.get("e2e")
    if e2e:
        # eval_e2e keys its figures by lexicon; the chain runs with none
        a, b = (e2e[k].get("none", e2e[k]) for k in ("fp32", "int8"))
        lines += [
            "",
            "End to end (det -> cls -> rec, det_test, ICDAR2015 word protocol, no lexicon), all FP32 -> all "
            f"INT8: hmean {a['hmean']:.4f} -> {b['hmean']:.4f} ({pt(b['hmean'] - a['hmean'])} pt), "
            f"precision {a['precision']:.4f} -> {b['precision']:.4f}, recall {a['recall']:.4f} -> "
            f"{b['recall']:.4f}.",
        ]
    return [*lines, ""]


def seed_section(folder: Path) -> list[str]:
    """The vendor's NPU workflow on PP-OCRv4/v2 (Paddle) and PP-OCRv3, beside the vendor's figures."""
    path = folder / "seed_table.json"
    lines = ["## The vendor's NPU workflow (fixed shapes, all INT8)", ""]
    data = json.loads(path.read_text()) if path.is_file() else None
    if not isinstance(data, dict):  # absent, or written before the table recorded its host
        return [*lines, f"{MISSING}`python benchmarks/seed_table.py --out {folder}`.", ""]
    lines += [
        f"Command: `{data['command']}` (every row is one `ocrquant run`; the script's docstring lists "
        f"them). Host: {data['host']}. Test sets: ICDAR2015 det_test (500), rec_test (2077 crops; cls "
        "on the first 30, as the vendor did). Simulator cosine: the integer simulator against "
        "onnxruntime at the model output, ties to even / ties away from zero.",
        "",
        "| model, input | target, method | Paddle FP32 | ONNX FP32 | INT8 | delta (95 % interval) "
        "| simulator cosine | vendor: Paddle / quantized |",
        "|---|---|---|---|---|---|---|---|",
    ]
    vendor = {"det": "0.411 / 0.415", "cls": "0.699 / 0.699", "rec": "0.655 / 0.649"}
    for r in data["rows"]:
        ci = r.get("delta_interval") or {}
        paddle = "-" if r.get("framework_metric") is None else f"{r['framework_metric']:.4f}"
        native = f" (native size {r['native_float']:.4f})" if "native_float" in r else ""
        interval = f" ({pt(ci['low'])} to {pt(ci['high'])})" if ci else ""
        shape = "x".join(str(d) for d in r.get("input_shape", []))
        lines.append(
            f"| {r['model']}{', ' + shape if shape else ''}, {r['test_size']} | {r['target']}, {r['method']} "
            f"| {paddle} | {r['float_metric']:.4f}{native} | {r['int8_metric']:.4f} "
            f"| {pt(r['delta'])}{interval} "
            f"| {r['sim_cosine']:.4f} / {r['sim_cosine_half_away']:.4f} | {vendor[r['task_kind']]} |"
        )
    return [*lines, ""]


def speed_section(path: Path) -> list[str]:
    """Latency per model, precision and backend as ratios to onnxruntime FP32 (benchmarks/speed.py)."""
    lines, s = section_artefact(
        "## Speed by backend (ratio to onnxruntime FP32)", path, "python benchmarks/speed.py"
    )
    if s is None:
        return lines
    backends = sorted({r["backend"] for rows in s["chains"].values() for r in rows if "backend" in r})
    columns = [(p, b) for b in backends for p in ("fp32", "int8") if (p, b) != ("fp32", "onnxruntime")]
    lines += [
        f"Command: `{s['command']}`. Host: {s['host']}. One interleaved loop per model pair, "
        f"{s['threads']} threads, {s['rounds']} rounds, median per call; onnxruntime spinning off, "
        f"OpenVINO with static shapes and an f32 precision hint.{load_text(s)} INT8 = the models of the "
        "chain sections above. FP32 = the zoo's files as shipped: on an Intel host PP-OCRv6 small det's "
        "denormal weights slow onnxruntime FP32 (last section), and the chain section gives INT8's speed-up "
        "over that file with them zeroed.",
        "",
        "| model | input | FP32 onnxruntime ms | " + " | ".join(f"{p.upper()} {b}" for p, b in columns) + "|",
        "|---|---|---|" + "---|" * len(columns),
    ]
    for rows in s["chains"].values():
        timed = [r for r in rows if "backend" in r]
        for key in dict.fromkeys((r["model"], r["shape"]) for r in timed):
            cell = {(r["precision"], r["backend"]): r for r in timed if (r["model"], r["shape"]) == key}
            base = cell.get(("fp32", "onnxruntime"))
            cells = [f"{cell[c]['vs_ort_fp32']:.2f}x" if c in cell else "-" for c in columns]
            lines.append(f"| {key[0]} | {key[1]} | {base['median_ms']:.2f} | " + " | ".join(cells) + " |")
        for r in rows:
            if "unsupported" in r:
                u = r["unsupported"]
                lines.append(f"\n{u['model']} on {u['backend']}: not run ({u['reason']}).")
    return [*lines, ""]


def first_command_section(folder: Path) -> list[str]:
    """How long the README's first command took in a fresh clone, and the table it printed."""
    path = folder / "first_command.json"
    lines, s = section_artefact(
        "## The README's first command, in a fresh clone",
        path,
        f"python benchmarks/first_command.py --out {folder}",
    )
    if s is None:
        return lines
    lines += [
        f"Command: `{s['command']}`. Host: {s['host']}. `{s['timed']}` took "
        f"**{s['seconds'] / 60:.1f} minutes** (venv and install included; the model cache "
        f"{'already filled' if s['cache_filled'] else 'empty'}; extras installed: {s['extras']})."
        + load_text(s),
        "",
        "| model | metric | N | FP32 | INT8 | delta | INT8 speed-up | MB FP32 -> INT8 | recipe |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in s["report"]["rows"]:
        recipe = r.get("details", {}).get("quantization", "").split(";")[1:3]
        lines.append(
            f"| {r['model']} | {r['metric']} | {r['test_size']} | {r['float_metric']:.4f} "
            f"| {r['int8_metric']:.4f} "
            f"| {pt(r['int8_metric'] - r['float_metric'])} pt | {r['speedup']:.2f}x "
            f"| {r['float_mb']:.2f} -> {r['int8_mb']:.2f} | {';'.join(recipe).strip()} |"
        )
    lines += [
        "",
        "On the synthetic sample shipped in the package (`ocrquant/data/sample`: N is each row's count of "
        "images, crops or crop rotations): a smoke test of the workflow, not an accuracy figure.",
    ]
    return [*lines, ""]


def pipeline_section(path: Path) -> list[str]:
    """Whole-chain images/s and e2e hmean against rapidocr 3.10's FP32 pipeline (benchmarks/pipeline.py)."""
    lines, s = section_artefact(
        "## The whole chain against rapidocr 3.10 (images/s, e2e hmean)",
        path,
        "python benchmarks/pipeline.py",
    )
    if s is None:
        return lines
    lines += [
        f"Command: `{s['command']}`. Host: {s['host']}. {s['images']} det_test images, each decoded once and "
        f"handed to every pipeline in a rotating order, {s['threads']} onnxruntime/OpenVINO threads; e2e "
        f"hmean on ICDAR2015 without a lexicon.{load_text(s)}",
        "",
        "| pipeline | images/s | vs rapidocr FP32 | e2e hmean | e2e P | e2e R |",
        "|---|---|---|---|---|---|",
    ]
    for r in s["rows"]:
        e2e = f"{r['e2e_hmean']:.4f} | {r['e2e_precision']:.4f} | {r['e2e_recall']:.4f}"
        lines.append(f"| {r['pipeline']} | {r['images_per_s']:.2f} | {r['vs_rapidocr']:.2f}x | {e2e} |")
    return [*lines, ""]


def openvino_accuracy_section(path: Path) -> list[str]:
    """The INT8 files scored in OpenVINO against onnxruntime on the full test sets."""
    lines, s = section_artefact(
        "## INT8 in OpenVINO against onnxruntime, full test sets",
        path,
        "python benchmarks/openvino_accuracy.py",
    )
    if s is None:
        return lines
    lines += [
        f"Command: `{s['command']}`. Host: {s['host']}. The INT8 files of the chain sections, loaded by "
        "plain OpenVINO as written; a decision is the text read (rec), the label (cls), the number of "
        "boxes kept or matched per image (det). The yardstick, last column: decisions in which each "
        "runtime's integer kernels differ from the same QDQ graph computed in float (onnxruntime with "
        "graph optimisation off), where measured.",
        "",
        "| chain | task | test set | N | metric | onnxruntime | OpenVINO | delta (95 % CI) | decisions "
        "differ | vs float QDQ: onnxruntime / OpenVINO |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in s["rows"]:
        ci = f" [{pt(r['low'])}, {pt(r['high'])}]" if r.get("low") is not None else ""
        emu = f"{r['ort_vs_emulation']} / {r['openvino_vs_emulation']}" if "ort_vs_emulation" in r else "-"
        lines.append(f"| {r['chain']} | {r['task']} | {r['test']} | {r['samples']} | {r['metric']} | "
                     f"{r['onnxruntime']:.4f} | {r['openvino']:.4f} | "
                     f"{pt(r['openvino'] - r['onnxruntime'])} pt{ci} | {r['decisions_differ']} | {emu} |"
                     )  # fmt: skip
    return [*lines, ""]


def openvino_target_section(path: Path) -> list[str]:
    """``--target openvino`` files: OpenVINO speed against FP32 and the ort-cpu file, full-set accuracy."""
    lines, s = section_artefact(
        "## `--target openvino`: the layout OpenVINO fuses, against the ort-cpu file",
        path,
        "python benchmarks/openvino_target.py",
    )
    if s is None:
        return lines
    lines += [
        f"Command: `{s['command']}`. Host: {s['host']}. Each task's models timed in one interleaved loop, "
        "2 threads, median per call, onnxruntime spinning off, OpenVINO static shapes and an f32 precision "
        "hint; plain OpenVINO loads each file as written. INT8 ort-cpu = the chain sections' default files, "
        "INT8 openvino = `ocrquant quantize` defaults with `--target openvino`. Accuracy: the openvino file "
        f"in OpenVINO on the full test set, deltas with their paired 95 % interval.{load_text(s)}",
        "",
        "| chain | task | input | ORT FP32 ms | OpenVINO FP32 | OpenVINO INT8 ort-cpu "
        "| OpenVINO INT8 openvino | openvino over OpenVINO FP32 | openvino file in ORT "
        "| metric: FP32 / ORT INT8 ort-cpu / OpenVINO INT8 openvino | openvino - FP32, pt "
        "| openvino - ORT INT8, pt |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in s["rows"]:
        a = r["accuracy"]
        deltas = [
            f"{pt(a['openvino_int8'] - a[ref])}" + (f" [{pt(a[k][0])}, {pt(a[k][1])}]" if a.get(k) else "")
            for ref, k in (("fp32", "vs_fp32"), ("ort_int8", "vs_ort_int8"))
        ]
        for shape in dict.fromkeys(x["shape"] for x in r["speed"]):
            ms = {(x["file"], x["backend"]): x["median_ms"] for x in r["speed"] if x["shape"] == shape}
            ort32 = ms[("fp32", "onnxruntime")]
            ratio = {k: f"{ort32 / v:.2f}x" for k, v in ms.items()}
            over_ov = ms[("fp32", "openvino")] / ms[("openvino", "openvino")]
            scores = f"{a['metric']} {a['fp32']:.4f} / {a['ort_int8']:.4f} / {a['openvino_int8']:.4f}"
            lines.append(
                f"| {r['chain']} | {r['task']} | {shape} | {ort32:.2f} | {ratio[('fp32', 'openvino')]} "
                f"| {ratio[('ort-cpu', 'openvino')]} | {ratio[('openvino', 'openvino')]} "
                f"| **{over_ov:.2f}x** | {ratio[('openvino', 'onnxruntime')]} | {scores} "
                f"| {deltas[0]} | {deltas[1]} |"
            )
    lines += [
        "",
        "Speed ratios are to onnxruntime FP32, except the bold column (to OpenVINO FP32). The openvino "
        "file is for OpenVINO: onnxruntime runs its convolutions in float between Q/DQ (the column after).",
    ]
    return [*lines, ""]


def quantize_time_section(path: Path) -> list[str]:
    """``ocrquant quantize``'s own wall time per task and executor (benchmarks/quantize_time.py)."""
    lines, s = section_artefact(
        "## How long `ocrquant quantize` takes (defaults, empty calibration cache)",
        path,
        "python benchmarks/quantize_time.py",
    )
    if s is None:
        return lines
    commands = list(dict.fromkeys(r.get("benchmark_command", s.get("command", "")) for r in s["rows"]))
    lines += [
        f"Command: {' and '.join(f'`{c}`' for c in commands)}. Host: {s['host']}. Each row is one "
        "`ocrquant quantize` process with its own empty calibration cache; phases from the sidecar's "
        "`method_search.seconds`.",
        "",
        "| model | workers | minutes | recipe | phases (s) | load start / end |",
        "|---|---|---|---|---|---|",
    ]
    for r in s["rows"]:
        phases = ", ".join(f"{k} {v}" for k, v in r["phases"].items() if k != "executor") or (
            "not recorded: the budget search after auto wrote the sidecar anew"
        )
        load = " / ".join(f"{x:.1f}" for x in r["load_average"])
        lines.append(f"| {r['model']} | {r['workers'] or 'in-process'} | {r['seconds'] / 60:.1f} | "
                     f"{recipe_text(r['recipe'])} | {phases} | {load} |")  # fmt: skip
    return [*lines, ""]


def previous_sections(text: str) -> dict[str, list[str]]:
    """The sections of an earlier ``docs/results.md``, by heading line, each with its lines."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            current = sections.setdefault(line, [line])
        elif current is not None:
            current.append(line)
    return sections


def kept_if_missing(lines: list[str], previous: dict[str, list[str]]) -> list[str]:
    """``lines``, or the earlier text of the same section where this checkout lacks its artefact."""
    if not any(line.startswith(MISSING) for line in lines) or lines[0] not in previous:
        return lines
    kept = previous[lines[0]]
    while kept and not kept[-1]:
        kept = kept[:-1]
    return [*kept, ""]


def denormals_section(path: Path) -> list[str]:
    """Denormal float weights and what they cost onnxruntime FP32 (benchmarks/denormals.py)."""
    lines, s = section_artefact(
        "## Denormal weights in onnxruntime FP32", path, "python benchmarks/denormals.py"
    )
    if s is None:
        return lines
    lines += [
        f"Command: `{s['command']}`. Host: {s['host']}. Three sessions of each float model timed "
        f"interleaved, {s['threads']} threads, {s['rounds']} rounds over {s['images']} real training "
        f"images each, median per call, spinning off; the last column is the largest output difference "
        f"from the file as shipped over those images.{load_text(s)}",
        "",
        "| model | input (first image) | denormal weights | FP32 as shipped, ms | with set_denormal_as_zero "
        "| denormal weights zeroed | max abs difference (as zero / zeroed) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in s["models"]:
        ms, d = r["ms"], r["max_abs_diff"]
        lines.append(
            f"| {r['model']} | {r['input']} | {r['denormal_weights']} | {ms['shipped']:.2f} "
            f"| {ms['shipped'] / ms['denormal_as_zero']:.2f}x | {ms['shipped'] / ms['weights_zeroed']:.2f}x "
            f"| {d['denormal_as_zero']:.3g} / {d['weights_zeroed']:.3g} |"
        )
    return [*lines, ""]


def render(args: argparse.Namespace, previous: dict[str, list[str]]) -> str:
    sections: list[Callable[[], list[str]]] = [
        lambda: headline_section(args, previous),
        lambda: chain_section("v6", args.v6),
        lambda: chain_section("v3", args.v3),
        lambda: speed_section(args.speed),
        lambda: pipeline_section(args.pipeline),
        lambda: openvino_accuracy_section(args.openvino),
        lambda: openvino_target_section(args.openvino_target),
        lambda: quantize_time_section(args.quantize_time),
        lambda: seed_section(args.seed),
        lambda: first_command_section(args.first),
        lambda: denormals_section(args.denormals),
    ]
    head = [
        "# Results",
        "",
        "Generated by `python benchmarks/results.py` from the artefacts of the commands named in each "
        "section; do not edit by hand. Latency ratios compare FP32 and INT8 measured in one interleaved "
        "run on the named host; on a shared 2-core virtual machine they move by about 0.1-0.2x between "
        "runs, so a ratio is a measurement on that host, not a constant.",
        "",
    ]
    return "\n".join(head + [line for section in sections for line in kept_if_missing(section(), previous)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--v6", type=Path, default=Path("runs/v6"))
    ap.add_argument("--v3", type=Path, default=Path("runs/v3"))
    ap.add_argument("--seed", type=Path, default=Path("runs/seed"))
    ap.add_argument("--first", type=Path, default=Path("runs/first-command"))
    ap.add_argument("--speed", type=Path, default=Path("runs/speed/speed.json"))
    ap.add_argument("--pipeline", type=Path, default=Path("runs/pipeline/pipeline.json"))
    ap.add_argument("--openvino", type=Path, default=Path("runs/openvino/accuracy.json"))
    ap.add_argument("--openvino-target", type=Path, default=Path("runs/openvino-target/summary.json"))
    ap.add_argument("--quantize-time", type=Path, default=Path("runs/quantize-time/quantize_time.json"))
    ap.add_argument("--denormals", type=Path, default=Path("runs/denormals/denormals.json"))
    ap.add_argument("--out", type=Path, default=Path("docs/results.md"))
    ap.add_argument("--readme", type=Path, default=Path("README.md"), help="its results table is rewritten")
    args = ap.parse_args()
    previous = previous_sections(args.out.read_text(encoding="utf-8")) if args.out.is_file() else {}
    text = render(args, previous)
    write_text_atomic(args.out, text)
    table = headline_table(args, previous)
    if table:  # empty where no chain was measured in this checkout: the README keeps its table
        update_readme(args.readme, table)
    print(text)


if __name__ == "__main__":
    run_script(main)
