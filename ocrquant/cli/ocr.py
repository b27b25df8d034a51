"""``ocrquant ocr`` (read the text in images) and ``ocrquant e2e`` (score the whole chain on a set)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ocrquant.cli.common import LimitOpt, StrictOpt, ThreadsOpt, console, guard_outputs, unit_interval
from ocrquant.data import READ_POLICY
from ocrquant.pipeline import PipelineConfig, build_pipeline
from ocrquant.pipeline.evaluate import ChainSpec, E2EScoring, eval_e2e
from ocrquant.pipeline.run import ocr_images
from ocrquant.runtime import RuntimeOptions
from ocrquant.zoo.registry import DEFAULT_CHAIN

log = logging.getLogger("ocrquant")

DetOpt = Annotated[str, typer.Option("--det", help="Detection model: zoo name or .onnx path.")]
ClsOpt = Annotated[
    str,
    typer.Option("--cls", help="Direction classifier: zoo name, .onnx path, or 'none' to skip the stage."),
]
RecOpt = Annotated[str, typer.Option("--rec", help="Recognition model: zoo name or .onnx path.")]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="fp32 | int8. With int8, zoo names mean their cached INT8 models (made by `ocrquant quantize`); "
        ".onnx paths are used as given.",
    ),
]
DropOpt = Annotated[
    float,
    typer.Option(
        "--drop-score", help="Drop lines whose recognition score is below this.", parser=unit_interval
    ),
]
ClsThreshOpt = Annotated[
    float,
    typer.Option(
        "--cls-thresh",
        help="Turn a crop 180 degrees when cls says '180' above this score.",
        parser=unit_interval,
    ),
]
RecBatchOpt = Annotated[
    int, typer.Option("--rec-batch", help="Crops per recognition call (width-sorted).", min=1)
]
LimitSideOpt = Annotated[
    int | None, typer.Option("--limit-side-len", help="det: resize limit (960).", min=32)
]
BoxThreshOpt = Annotated[
    float | None,
    typer.Option("--box-thresh", help="det: box score threshold (0.6).", parser=unit_interval),
]
CharDictOpt = Annotated[Path | None, typer.Option("--char-dict", help="rec: dictionary file.")]


def _det_options(limit_side_len: int | None, box_thresh: float | None) -> dict[str, Any]:
    given = {"limit_side_len": limit_side_len, "box_thresh": box_thresh}
    return {k: v for k, v in given.items() if v is not None}


def _build(
    det: str, cls: str, rec: str, precision: str, threads: int, drop_score: float, cls_thresh: float,
    rec_batch: int, limit_side_len: int | None, box_thresh: float | None, char_dict: Path | None,
) -> Any:  # fmt: skip

    det_options = _det_options(limit_side_len, box_thresh)
    rec_options = {"char_dict": str(char_dict)} if char_dict else None
    config = PipelineConfig(drop_score=drop_score, cls_thresh=cls_thresh, rec_batch_size=rec_batch)
    return build_pipeline(
        det, cls, rec, precision=precision, config=config, runtime=RuntimeOptions(threads=threads),
        det_options=det_options, rec_options=rec_options,
    )  # fmt: skip


def ocr_cmd(
    source: Annotated[Path, typer.Argument(help="An image, or a folder of images (read in name order).")],
    det: DetOpt = DEFAULT_CHAIN["det"],
    cls: ClsOpt = DEFAULT_CHAIN["cls"],
    rec: RecOpt = DEFAULT_CHAIN["rec"],
    precision: PrecisionOpt = "fp32",
    draw: Annotated[
        Path | None,
        typer.Option("--draw", help="Write a picture (boxes | text side by side): a .png file, or a folder."),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write boxes, texts, scores, timings.")
    ] = None,
    font: Annotated[
        Path | None, typer.Option("--font", help="Font for --draw (default: a CJK font).")
    ] = None,
    threads: ThreadsOpt = 0,
    drop_score: DropOpt = 0.5,
    cls_thresh: ClsThreshOpt = 0.9,
    rec_batch: RecBatchOpt = 6,
    limit_side_len: LimitSideOpt = None,
    box_thresh: BoxThreshOpt = None,
    char_dict: CharDictOpt = None,
) -> None:
    """Read the text in an image (or every image of a folder): detect, classify direction, recognise."""

    inputs = [source, det, cls, rec, char_dict, font]
    as_folder = draw is not None and (draw.is_dir() or source.is_dir() or draw.suffix == "")
    guard_outputs(
        inputs,
        files=[json_out, None if as_folder else draw],
        folders=[draw if as_folder else None],
        datasets=[source if source.is_dir() else None],  # pictures drawn into it would be read next time
    )
    pipeline = _build(
        det, cls, rec, precision, threads, drop_score, cls_thresh, rec_batch, limit_side_len, box_thresh,
        char_dict,
    )  # fmt: skip
    report = ocr_images(pipeline, source, draw=draw, json_out=json_out, font=font)
    for item in report["images"]:
        table = Table(title=f"{item['image']}  ({item['timing_ms']['total']:.0f} ms)", title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("text")
        table.add_column("score", justify="right")
        table.add_column("cls")
        table.add_column("box (top-left)")
        for i, line in enumerate(item["lines"]):
            cls_txt = "" if line["cls_label"] is None else f"{line['cls_label']} {line['cls_score']:.2f}"
            x, y = line["polygon"][0]
            table.add_row(str(i), line["text"], f"{line['score']:.3f}", cls_txt, f"{x:.0f},{y:.0f}")
        if not item["lines"]:
            table.add_row("", "(no text found)", "", "", "")
        console.print(table)
    for skip in report["skipped"]:
        console.print(f"[yellow]skipped[/] {skip['error']}", highlight=False)
    for path in report.get("drawn", []):
        console.print(f"wrote {path}")
    if json_out:
        console.print(f"wrote {json_out}")


def e2e_cmd(
    data: Annotated[
        Path, typer.Option("--data", "-d", help="Det dataset with transcriptions (ICDAR2015 layout).")
    ],
    det: DetOpt = DEFAULT_CHAIN["det"],
    cls: ClsOpt = DEFAULT_CHAIN["cls"],
    rec: RecOpt = DEFAULT_CHAIN["rec"],
    precision: PrecisionOpt = "fp32",
    lexicon: Annotated[
        str,
        typer.Option(
            "--lexicon", help="none | strong | weak | generic | all (comma-separated list allowed)."
        ),
    ] = "none",
    vocab_dir: Annotated[
        Path | None,
        typer.Option("--vocab-dir", help="ICDAR2015 vocabularies/ folder (default: beside --data)."),
    ] = None,
    snap: Annotated[
        str,
        typer.Option(
            "--snap",
            help="Which recognised words a lexicon replaces: letters (those with a letter; numbers are "
            "kept) | all.",
        ),
    ] = "letters",
    data_format: Annotated[
        str | None, typer.Option("--format", help="Dataset format (default: detect).")
    ] = None,
    limit: LimitOpt = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="result.json (enables resume).")
    ] = None,
    threads: ThreadsOpt = 0,
    drop_score: DropOpt = 0.5,
    cls_thresh: ClsThreshOpt = 0.9,
    rec_batch: RecBatchOpt = 6,
    limit_side_len: LimitSideOpt = None,
    box_thresh: BoxThreshOpt = None,
    char_dict: CharDictOpt = None,
    strict: StrictOpt = False,
) -> None:
    """Score the detect -> classify -> recognise chain with the ICDAR2015 end-to-end protocol."""

    guard_outputs([det, cls, rec, vocab_dir, char_dict], files=[output], datasets=[data])
    READ_POLICY.strict = strict
    lexicons = [x for x in lexicon.split(",") if x.strip()]
    chain = ChainSpec(
        det, cls, rec, precision, _det_options(limit_side_len, box_thresh),
        {"char_dict": str(char_dict)} if char_dict else None,
    )  # fmt: skip
    result = eval_e2e(
        data, chain, E2EScoring(lexicons, vocab_dir, snap, limit), data_format=data_format, output=output,
        config=PipelineConfig(drop_score=drop_score, cls_thresh=cls_thresh, rec_batch_size=rec_batch),
        runtime=RuntimeOptions(threads=threads),
    )  # fmt: skip
    table = Table(title=f"e2e | {result.data} | {result.count} images", title_justify="left")
    for col in ("lexicon", "precision", "recall", "hmean", "correct", "gt care", "det care"):
        table.add_column(col, justify="left" if col == "lexicon" else "right")
    for name, m in result.metrics.items():
        table.add_row(
            name, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['hmean']:.4f}", str(m["correct"]),
            str(m["gt_care"]), str(m["det_care"]),
        )  # fmt: skip
    first = next(iter(result.metrics.values()))
    table.add_row(
        "(detection only)", f"{first['det_precision']:.4f}", f"{first['det_recall']:.4f}",
        f"{first['det_hmean']:.4f}", "", "", "",
    )  # fmt: skip
    console.print(table)
    t = result.timing
    stages = ", ".join(f"{k} {v:.1f}" for k, v in t["stage_ms_mean"].items())
    console.print(
        f"latency per image: mean {t['latency_ms_mean']:.1f} ms, p50 {t['latency_ms_p50']:.1f} ms, "
        f"p90 {t['latency_ms_p90']:.1f} ms (stages, mean ms: {stages}); wall {t['wall_s']:.1f} s; "
        f"models {result.settings['size_mb']:.1f} MB; skipped {len(result.skipped)}",
        highlight=False,
    )
    if output:
        console.print(f"wrote {output}")


def register(app: typer.Typer) -> None:
    """Add ``ocr`` and ``e2e`` to the ``ocrquant`` app."""
    app.command("ocr")(ocr_cmd)
    app.command("e2e")(e2e_cmd)
